import pytest


@pytest.fixture(scope="session", autouse=True)
def _synchronous_launch():
    """MindSpore's PyNative ops are dispatched to worker queues by default, and every shape/dtype
    query then waits for those queues (~5 ms each, hundreds per decoding step on 2 cores).
    Synchronous launch makes token-by-token decoding ~10x faster, as `petrun predict` does for
    itself. It is switched on in this process through the runtime API, not through the
    MS_DEV_LAUNCH_BLOCKING variable, so it never leaks into the CLI subprocesses other tests start
    (which must behave the same whichever tests were selected)."""
    import mindspore as ms
    ms.runtime.launch_blocking()
    yield
