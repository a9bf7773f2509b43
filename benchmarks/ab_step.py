"""In-process A/B of a model-level toggle on the real training step: two copies of the model
built from the same config (bench_vs_torch.py's YAML for --shape), B with the toggle applied,
each wrapped in petrun's TrainStep; calls alternate A, B, A, B ... on the same batch, so load
from other processes hits both alike (the tightest comparison on a shared machine).

    .venv/bin/python benchmarks/ab_step.py --shape small --toggle select-mask --iters 8

Toggles (B side):
  select-mask    DotProductAttention replaces masked scores (broadcast + full_like + select)
                 instead of adding the mask's bias (the default since 2026-12-02)
  no-lora-dropout  LoRA dropout p=0 (what the dropout costs; changes the numbers)
 plain-attention-grad  DotProductAttention without its hand-written backward (attention_core.py):
                 the additive-mask path differentiated by MindSpore, as before 2026-12-03
  no-branch      the step applies the optimizer update unconditionally (no `if not overflow:`
                 in the graph), as the fp32 step did before 76becf1
  implicit-broadcast  RMSNorm, ApplyRotary and the attention core leave Add/Sub/Mul to broadcast
                 their small operands (full_broadcast off), as before 2026-12-03 (RESULTS
                 experiment 20: MindSpore's CPU kernels then keep output-sized index tables)
  broadcast-to   the CPU cells' explicit broadcasts as BroadcastTo, not Tile (models/broadcast.py,
                 as before experiment 24)
  transpose-heads  the attention cells split and merge heads by Transpose, not a row Gather
                 (KernelChoice.gather_heads off), as before experiment 26
  same           nothing: both sides alike (the noise floor, and whether steps repeat bit for bit)
  genexpr-tail   the step's per-gradient cast, norm and clip as generator expressions and a
                 list comprehension over the gradient tuple, as before 2026-12-03 09:00 (now
                 HyperMap: compiles much faster, same ops)
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


def apply_toggle(model, toggle: str) -> int:
    n = 0
    for _, cell in model.cells_and_names():
        if toggle == "select-mask" and type(cell).__name__ == "DotProductAttention":
            cell.additive_mask = False
            n += 1
        elif toggle == "plain-attention-grad" and type(cell).__name__ == "DotProductAttention":
            cell.fast_core = None
            n += 1
        elif toggle == "implicit-broadcast" and getattr(cell, "full_broadcast", False):
            cell.full_broadcast = False
            n += 1
        elif toggle == "transpose-heads" and getattr(cell, "gather_heads", False):
            cell.gather_heads = False
            n += 1
        elif toggle == "no-lora-dropout" and type(cell).__name__ == "LoRALinear":
            from mindspore import nn
            cell.lora_dropout = nn.Dropout(p=0.0)
            n += 1
    return n


def _unbranched(base):
    from mindspore import ops

    class UnbranchedStep(base):
        def construct(self, *inputs):
            loss, grads = self.scaled_grads(*inputs)
            norm = self.global_norm(grads)
            overflow = self.next_scale(self.overflow(norm))
            if self.use_clip:
                grads = clip_by_norm(grads, norm, self.clip_norm)
            loss = ops.depend(loss, self.optimizer(grads))
            return loss, overflow, self.loss_scale.value(), norm

    from petrun.train.step import clip_by_norm
    return UnbranchedStep


def _genexpr_tail(base):
    import mindspore as ms
    from mindspore import Tensor, ops

    class GenexprStep(base):
        def scaled_grads(self, *inputs):
            loss = self.network(*inputs)
            sens = ops.cast(self.loss_scale, loss.dtype)
            grads = self.grad(self.network, self.weights)(*inputs, sens)
            inv = ops.cast(1.0 / self.loss_scale, ms.float32)
            return loss, tuple(ops.cast(g, ms.float32) * inv for g in grads)

        def global_norm(self, grads):
            return ops.sqrt(ops.stack([ops.reduce_sum(ops.square(g)) for g in grads]).sum())

        def construct(self, *inputs):
            loss, grads = self.scaled_grads(*inputs)
            norm = self.global_norm(grads)
            overflow = self.next_scale(self.overflow(norm))
            if self.use_clip:
                factor = ops.minimum(Tensor(1.0, ms.float32), self.clip_norm / (norm + 1e-6))
                grads = tuple(g * factor for g in grads)
            if not overflow:
                self.optimizer(grads)
            return loss, overflow, self.loss_scale.value(), norm
    return GenexprStep


def main() -> int:
    from bench_vs_torch import SHAPES, THREADS, petrun_config, tokens
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="small", choices=list(SHAPES))
    ap.add_argument("--toggle", default="select-mask", choices=["select-mask", "no-lora-dropout", "no-branch", "plain-attention-grad",
                             "genexpr-tail", "same", "implicit-broadcast", "broadcast-to",
                             "transpose-heads"])
    ap.add_argument("--iters", type=int, default=8)
    args = ap.parse_args()
    s = SHAPES[args.shape]
    os.environ["PETRUN_COMPILE_CACHE"] = "0"
    import mindspore as ms
    import numpy as np
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.device_context.cpu.op_tuning.threads_num(THREADS)
    import petrun
    from petrun.models.registry import arch_entry
    from petrun.train.optim import build_optimizer
    from petrun.train.step import TrainStep

    with tempfile.TemporaryDirectory() as tmp:
        cfg = petrun.load_config(str(petrun_config(args.shape, s, 4, Path(tmp), [])))
    cells, losses = {}, {}
    extra = arch_entry(cfg.get("model.arch.type")).extra_tokens
    ids = ms.Tensor(np.random.default_rng(0).integers(3, s["vocab"], (s["batch"], s["seq"] + extra)),
                    ms.int32)
    for side in ("A", "B"):
        ms.set_seed(0)
        model = petrun.build_model(cfg)
        from petrun.models import broadcast
        broadcast.USE_TILE = not (side == "B" and args.toggle == "broadcast-to")
        if side == "B" and args.toggle not in ("no-branch", "genexpr-tail", "same", "broadcast-to"):
            print(f"B: {args.toggle} on {apply_toggle(model, args.toggle)} cells")
        model.set_train(True)
        params = list(model.trainable_params())
        opt = build_optimizer(params, cfg.get("optimizer") or {}, np.full(100, 1e-4, np.float32))
        step_cls = TrainStep
        if side == "B" and args.toggle == "no-branch":
            step_cls = _unbranched(TrainStep)
        elif side == "B" and args.toggle == "genexpr-tail":
            step_cls = _genexpr_tail(TrainStep)
        cells[side] = step_cls(model, opt, 1.0, None, 1.0, True)
        cells[side].set_train(True)
        t0 = time.perf_counter()
        losses[side] = float(cells[side](ids, ids)[0].asnumpy())
        print(f"{side}: compile + first step {time.perf_counter() - t0:.1f} s, loss {losses[side]:.6f}",
              flush=True)
    outs = {side: [] for side in cells}
    times = {"A": [], "B": []}
    for i in range(args.iters):
        for side in (("A", "B") if i % 2 == 0 else ("B", "A")):
            t0 = time.perf_counter()
            out = cells[side](ids, ids)
            outs[side].append((float(out[0].asnumpy()), float(out[3].asnumpy())))
            times[side].append(time.perf_counter() - t0)
    for side, t in times.items():
        print(f"{side}: median {statistics.median(t) * 1000:.0f} ms, min {min(t) * 1000:.0f} ms "
              f"({tokens(s) / statistics.median(t):,.0f} tok/s)")
    # Even with --toggle same the two copies part at the ~1e-5 level after about ten calls
    # (2026-12-03: call 11), so only the first calls say "same numbers"; fresh processes repeat
    # their first two steps bit for bit (benchmarks/compile_phases.py prints loss and norm).
    same = outs["A"] == outs["B"]
    first = next((i for i, (a, b) in enumerate(zip(outs["A"], outs["B"])) if a != b), None)
    print(f"(loss, grad norm) of every step identical on both sides: {same}"
          + ("" if same else f"; first differs at call {first + 2}: A {outs['A'][first]}, "
                             f"B {outs['B'][first]}"))
    a, b = statistics.median(times["A"]), statistics.median(times["B"])
    print(f"A/B time ratio (B slower if > 1): {b / a:.3f}; load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
