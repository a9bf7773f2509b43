"""Micro A/B of one layer's attention core, forward + backward, in one process, calls
interleaved (issue 16): MindSpore's autodiff of the composite formula vs petrun's fp32 core with
its hand-written backward (petrun/models/attention_core.py), and a causal query-chunked variant.

    .venv/bin/python benchmarks/ab_attention.py [--batch 2 --heads 8 --seq 512 --dim 64] [--iters 12]

Prints each variant's compile time, its largest gradient difference from the first variant, and
the median / min ms per call. Add `--torch` to time torch's scaled_dot_product_attention
(is_causal) and its eager matmul-softmax formula on the same shapes for reference.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def variants(scale: float, seq: int):
    import mindspore as ms
    from mindspore import nn, ops

    from petrun.models.attention_core import SoftmaxAttention
    low = float(np.finfo(np.float32).min)

    class Autodiff(nn.Cell):     # DotProductAttention's additive path before 2026-12-03
        def __init__(self):
            super().__init__()
            self.qk, self.pv = ops.BatchMatMul(transpose_b=True), ops.BatchMatMul()
            self.softmax = ops.Softmax(-1)

        def construct(self, q, k, v, mask):
            scores = self.qk(q, k) * scale + ops.cast(mask <= 0.5, ms.float32) * low
            return self.pv(self.softmax(scores), v)

    class Core(nn.Cell):
        def __init__(self):
            super().__init__()
            self.core = SoftmaxAttention(scale)

        def construct(self, q, k, v, mask):
            return self.core(q, k, v, ops.cast(mask <= 0.5, ms.float32) * low)

    class Chunked(Core):         # queries in halves; the first half reads only its own keys
        def construct(self, q, k, v, mask):
            bias = ops.cast(mask <= 0.5, ms.float32) * low
            half = seq // 2
            first = self.core(q[:, :, :half], k[:, :, :half], v[:, :, :half],
                              bias[:, :, :half, :half])
            return ops.cat((first, self.core(q[:, :, half:], k, v, bias[:, :, half:])), 2)

    return {"autodiff": Autodiff, "core": Core, "core-chunked": Chunked}


def main() -> int:
    ap = argparse.ArgumentParser()
    for name, default in (("batch", 2), ("heads", 8), ("seq", 512), ("dim", 64), ("iters", 12)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--torch", action="store_true")
    args = ap.parse_args()
    import mindspore as ms
    from mindspore import Tensor, nn, ops
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.device_context.cpu.op_tuning.threads_num(2)
    shape = (args.batch, args.heads, args.seq, args.dim)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    q, k, v = (Tensor(a) for a in arrays)
    mask = Tensor(np.tril(np.ones((args.seq, args.seq), np.float32))[None, None])

    class Loss(nn.Cell):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def construct(self, q, k, v, mask):
            return (self.net(q, k, v, mask) * 1.0).sum()

    class Grad(nn.Cell):
        def __init__(self, net):
            super().__init__()
            self.loss = Loss(net)
            self.grad = ops.GradOperation(get_all=True)

        def construct(self, q, k, v, mask):
            return self.grad(self.loss)(q, k, v, mask)

    cells, ref = {}, None
    for name, cls in variants(1.0 / np.sqrt(args.dim), args.seq).items():
        cells[name] = Grad(cls())
        t0 = time.perf_counter()
        grads = [g.asnumpy() for g in cells[name](q, k, v, mask)[:3]]
        diff = "" if ref is None else f", max |dgrad| vs first {max(np.abs(a - b).max() for a, b in zip(grads, ref)):.2e}"
        ref = ref or grads
        print(f"{name}: compile + first call {time.perf_counter() - t0:.1f} s{diff}", flush=True)
    times = {n: [] for n in cells}
    names = list(cells)
    for i in range(args.iters):
        for name in names if i % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            cells[name](q, k, v, mask)[0].asnumpy()
            times[name].append(time.perf_counter() - t0)
    for name, t in times.items():
        print(f"{name:14s} median {statistics.median(t) * 1e3:6.0f} ms  min {min(t) * 1e3:6.0f} ms")
    if args.torch:
        import torch
        torch.set_num_threads(2)
        tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in arrays)
        causal = torch.tril(torch.ones(args.seq, args.seq, dtype=torch.bool))

        def sdpa():
            return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)

        def eager():
            s = (tq @ tk.transpose(-1, -2)) / np.sqrt(args.dim)
            return s.masked_fill(~causal, float("-inf")).softmax(-1) @ tv
        for name, f in (("torch sdpa", sdpa), ("torch eager", eager)):
            t = []
            for _ in range(args.iters):
                t0 = time.perf_counter()
                f().sum().backward()
                t.append(time.perf_counter() - t0)
            print(f"{name:14s} median {statistics.median(t[2:]) * 1e3:6.0f} ms  min {min(t) * 1e3:6.0f} ms")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
