"""In-process A/B of one decoding step: the KV cache written in place in Parameters of the
compiled step (what petrun.infer.generate.KVCache does since 2026-12-03) against the way before
it, every layer's cache passed into the graph and a copy with the new slot selected in passed
out (broadcast + select over the whole cache).

    .venv/bin/python benchmarks/ab_decode.py [--shape small] [--rounds 6] [--calls 25]

Both graphs run the same model with the same weights on the same cache (the prompt's keys and
values), one token at slot 40; calls alternate in blocks (the order flips each round) and each
side keeps its per-round medians. Their logits are compared first (they must be equal).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from mindspore import ops   # at module level: a graph cannot parse an import statement

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def select_write(past, key, value, write_at=None):
    """layers.extend_cache before 2026-12-03: write_at (1, 1, L, 1) bool, selected over it all."""
    if past is None:
        return key, value
    past_k, past_v = ops.cast(past[0], key.dtype), ops.cast(past[1], value.dtype)
    if write_at is None:
        return ops.cat((past_k, key), 2), ops.cat((past_v, value), 2)
    where = ops.broadcast_to(write_at, past_k.shape)
    return (ops.select(where, ops.broadcast_to(key, past_k.shape), past_k),
            ops.select(where, ops.broadcast_to(value, past_v.shape), past_v))


def main() -> int:
    from bench_vs_torch import SHAPES
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="small", choices=list(SHAPES))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calls", type=int, default=25)
    args = ap.parse_args()
    os.environ.setdefault("MS_DEV_LAUNCH_BLOCKING", "1")
    import importlib

    import mindspore as ms
    import numpy as np
    from mindspore import Tensor, mutable, nn
    from bench_vs_torch import THREADS, petrun_model
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.runtime.launch_blocking()
    ms.device_context.cpu.op_tuning.threads_num(THREADS)
    ms.set_seed(0)
    from petrun.infer import kv_cache as gen
    from petrun.models.registry import build_base_model
    s = SHAPES[args.shape]
    arch, mc, _ = petrun_model(s)
    net = build_base_model({"arch": {"type": arch}, "model_config": mc}, device_target="CPU")
    net.set_train(False)
    family = importlib.import_module(f"petrun.models.{s['family']}")

    class SelectStep(nn.Cell):
        def __init__(self, model):
            super().__init__(auto_prefix=False)
            self.net = model

        @ms.jit
        def construct(self, input_ids, positions, mask, past, write_at):
            return self.net.decode(input_ids, positions, mask, past, True, write_at)

    slots, slot = 160, 40
    prompt = np.random.default_rng(0).integers(3, s["vocab"], (1, 32)).astype(np.int32)
    cache = gen.KVCache.empty(net, slots, 1)
    with gen.pynative():
        cache.extend(net, prompt)
    tok, pos = np.array([[5]], np.int32), cache.positions()[:, None]
    past = tuple((Tensor(k.asnumpy()), Tensor(v.asnumpy())) for k, v in cache.past)
    old = SelectStep(net)

    def call_select():
        where = np.zeros((1, 1, slots, 1), bool)
        where[0, 0, slot, 0] = True
        valid = cache.key_valid.copy()
        valid[:, slot] = True
        logits, presents = old(Tensor(tok), Tensor(pos), Tensor(valid[:, None, None, :].astype(
            np.float32)), mutable(past), Tensor(where))
        _ = tuple(tuple(p) for p in presents)     # what the old KVCache kept
        return logits.asnumpy()[:, -1, :]

    def call_in_place():
        cache.next_slot = slot
        return cache(net, tok, pos)

    keep = family.extend_cache        # compile the old graph with the old write
    family.extend_cache = select_write
    try:
        a = call_select()
    finally:
        family.extend_cache = keep
    b = call_in_place()
    print(f"max |select - in place| logits: {float(np.abs(a - b).max()):.3g}")
    res = {"select": [], "in place": []}
    sides = (("select", call_select), ("in place", call_in_place))
    for r in range(args.rounds):
        for name, fn in sides if r % 2 == 0 else sides[::-1]:
            times = []
            for _ in range(args.calls):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            res[name].append(float(np.median(times)))
    for name, meds in res.items():
        print(f"{name:9s} per-round medians ms {[round(1000 * m, 1) for m in meds]}, "
              f"best {1000 * min(meds):.2f}, mean {1000 * float(np.mean(meds)):.2f}")
    print(f"in place / select: best {min(res['in place']) / min(res['select']):.3f}, mean "
          f"{np.mean(res['in place']) / np.mean(res['select']):.3f}; load average "
          f"{os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
