import os

# MindSpore's PyNative ops are dispatched to worker queues by default, and every shape/dtype
# query then waits for those queues (~5 ms each, hundreds per decoding step on 2 cores).
# Synchronous launch makes token-by-token decoding ~10x faster. It is read once, before the
# first kernel runs, so it is set at collection time (it also speeds up other PyNative tests).
os.environ.setdefault("MS_DEV_LAUNCH_BLOCKING", "1")
