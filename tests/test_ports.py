"""tests/ports.py: a master port taken between choosing and binding it costs a retry, not a red
test (issue 17, defect 7)."""
import socket

from tests.conftest import run_cli
from tests.ports import _ephemeral, free_port, with_free_port


def test_free_port_is_bindable_and_outside_the_ephemeral_range():
    lo, hi = _ephemeral()
    for _ in range(5):
        port = free_port()
        assert not lo <= port <= hi
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_taken_after_it_was_chosen_is_retried(tmp_path):
    script = tmp_path / "w.py"
    script.write_text("print('worker ran', flush=True)\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        used = []

        def run(port):
            # The first attempt loses the race: another process holds its port by now.
            used.append(busy.getsockname()[1] if not used else port)
            return run_cli("launch", "--worker-num", 2, "--master-port", used[-1], "--log-dir",
                           tmp_path / f"logs{len(used)}", "--", "python", script, timeout=120)

        r = with_free_port(run)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(used) == 2 and used[1] != used[0]
    assert "worker ran" in (tmp_path / "logs2" / "worker_0.log").read_text()
