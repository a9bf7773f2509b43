"""Where a petrun training step's time goes: forward, backward, optimizer, LM head + loss, and
how much of it the matmul FLOPs explain at this CPU's fp32 peak.

    .venv/bin/python benchmarks/step_breakdown.py --shape small [--iters 5] [-o key=value ...]

Builds the model exactly as `petrun finetune` does (the YAML that bench_vs_torch.py generates for
the shape, petrun.build_model, petrun's optimizer and TrainStep) and times separately compiled
graph cells on one fixed batch, each the median of --iters calls after a compile call, each call
ended by reading its result on the host (as the training loop does):

  forward        loss = model(input_ids, labels)
  forward+grad   loss and the trainable parameters' gradients (GradOperation), no update
  train step     petrun.train.step.TrainStep: forward+grad, global norm, clip, AdamW update
  head+loss      lm_head matmul + cross-entropy on a (B, S, hidden) input, forward and the
                 gradient with respect to that input (what backward pays for the vocabulary)
  optimizer      the AdamW update alone on constant gradients

FLOPs are counted analytically (matmuls only; attention as the full square, since the mask does
not skip work); "ideal" = FLOPs / PEAK_GFLOPS (reference/feasibility.md §2: 187 GFLOP/s fp32 on
the 2 cores).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PEAK_GFLOPS = 187.0


def flops(s: dict, trainable_full: bool) -> dict:
    t = s["batch"] * s["seq"]
    h, f, L, v = s["hidden"], s["ffn"], s["layers"], s["vocab"]
    kv = h * s["kv"] // s["heads"]
    if s["family"] == "gpt2":
        per_layer = h * 3 * h + h * h + 2 * h * f
    else:
        per_layer = h * h + 2 * h * kv + h * h + 3 * h * f
    n_mm = L * per_layer + h * v                      # + lm_head
    attn = 4 * s["batch"] * s["seq"] ** 2 * h * L      # QK^T and PV, forward
    fwd = 2 * n_mm * t + attn
    bwd = 2 * n_mm * t + 2 * attn + (2 * n_mm * t if trainable_full else 0)
    head = 2 * h * v * t
    return {"forward": fwd, "backward": bwd, "step": fwd + bwd, "head fwd+dX": 2 * head}


def timed(fn, iters: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def main() -> int:
    from bench_vs_torch import SHAPES, THREADS, petrun_config
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="small", choices=list(SHAPES))
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("-o", "--override", action="append", default=[])
    ap.add_argument("--only", default="", help="comma list of parts to time")
    args = ap.parse_args()
    s = SHAPES[args.shape]

    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.device_context.cpu.op_tuning.threads_num(THREADS)
    import petrun
    from petrun.train import step as steps
    from petrun.train.optim import build_optimizer

    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = petrun_config(args.shape, s, 4, Path(tmp), [])
        cfg = petrun.load_config(str(cfg_path), args.override)
    model = petrun.build_model(cfg)
    model.set_train(True)
    trainable = list(model.trainable_params())
    from petrun.models.registry import arch_entry
    extra = arch_entry(cfg.get("model.arch.type")).extra_tokens
    rng = np.random.default_rng(0)
    ids = ms.Tensor(rng.integers(3, s["vocab"], (s["batch"], s["seq"] + extra)), ms.int32)
    lr = np.full(1000, 1e-4, np.float32)
    opt = build_optimizer(trainable, cfg.get("optimizer") or {}, lr)

    class Fwd(nn.Cell):
        def __init__(self, net):
            super().__init__(auto_prefix=False)
            self.net = net

        def construct(self, x, y):
            return self.net(x, y)

    class FwdGrad(nn.Cell):
        def __init__(self, net, weights):
            super().__init__(auto_prefix=False)
            self.net, self.weights = net, weights
            self.grad = ops.GradOperation(get_by_list=True)

        def construct(self, x, y):
            return self.net(x, y), self.grad(self.net, self.weights)(x, y)

    head_w = ms.Parameter(ms.Tensor(rng.standard_normal((s["vocab"], s["hidden"])).astype(np.float32)
                                    * 0.02), name="head_w", requires_grad=False)

    class Head(nn.Cell):
        def __init__(self):
            super().__init__()
            self.w = head_w
            self.mm = ops.MatMul(transpose_b=True)
            from petrun.models.layers import MaskedCrossEntropy
            self.loss = MaskedCrossEntropy()

        def construct(self, hidden, targets):
            logits = self.mm(ops.reshape(hidden, (-1, hidden.shape[-1])), self.w)
            return self.loss(logits, ops.reshape(targets, (-1,)))

    class HeadGrad(nn.Cell):
        def __init__(self, head):
            super().__init__()
            self.head = head
            self.grad = ops.GradOperation()

        def construct(self, hidden, targets):
            return self.grad(self.head)(hidden, targets)

    class OptOnly(nn.Cell):
        def __init__(self, opt, grads):
            super().__init__(auto_prefix=False)
            self.opt, self.grads = opt, grads

        def construct(self):
            return self.opt(self.grads)

    full = not cfg.get("model.model_config.pet_config")
    fl = flops(s, full)
    only = set(filter(None, args.only.split(",")))
    rows = []

    def report(name, fn, gflop=None):
        if only and name not in only:
            return
        first, med = timed(fn, args.iters)
        ideal = gflop / PEAK_GFLOPS / 1e9 if gflop else None
        rows.append((name, first, med, gflop, ideal))
        print(f"{name:14s} compile+1st {first:6.1f} s  median {med * 1000:8.1f} ms"
              + (f"  {gflop / 1e9:6.1f} GFLOP → ideal {ideal * 1000:6.0f} ms "
                 f"({100 * ideal / med:4.0f}% of peak)" if gflop else ""), flush=True)

    print(f"shape {args.shape}: {s}; trainable {sum(int(np.prod(p.shape)) for p in trainable):,}; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    fwd = Fwd(model)
    report("forward", lambda: fwd(ids, ids).asnumpy(), fl["forward"])
    fg = FwdGrad(model, ms.ParameterTuple(trainable))
    report("forward+grad", lambda: fg(ids, ids)[0].asnumpy(), fl["step"])
    hidden = ms.Tensor(rng.standard_normal((s["batch"], s["seq"], s["hidden"])).astype(np.float32))
    tgt = ms.Tensor(rng.integers(3, s["vocab"], (s["batch"], s["seq"])), ms.int32)
    hg = HeadGrad(Head())
    report("head+loss", lambda: hg(hidden, tgt).asnumpy(), fl["head fwd+dX"])
    grads = tuple(ms.Tensor(np.full(p.shape, 1e-3, np.float32)) for p in trainable)
    oo = OptOnly(opt, grads)
    report("optimizer", lambda: oo())
    opt2 = build_optimizer(trainable, cfg.get("optimizer") or {}, lr)
    ts = steps.TrainStep(model, opt2, 1.0, None, 1.0, True)
    ts.set_train(True)
    report("train step", lambda: ts(ids, ids)[0].asnumpy(), fl["step"])
    print(f"load {os.getloadavg()[0]:.2f}")
    print("\n| part | compile + first call s | median ms | GFLOP | ideal ms at 187 GFLOP/s | "
          "share of peak |\n|---|---:|---:|---:|---:|---:|")
    for name, first, med, gflop, ideal in rows:
        print(f"| {name} | {first:.1f} | {med * 1000:.0f} | "
              + (f"{gflop / 1e9:.1f} | {ideal * 1000:.0f} | {100 * ideal / med:.0f}% |"
                 if gflop else "– | – | – |"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
