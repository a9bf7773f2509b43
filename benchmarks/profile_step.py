"""Where a training step's time goes, per operator, on either side of bench_vs_torch.py (issue 16).

    .venv/bin/python benchmarks/profile_step.py --side petrun [--shape small] [--steps 3]
    .venv/bin/python benchmarks/profile_step.py --side torch  [--shape small] [--steps 3]

petrun: the same model, optimizer and TrainStep as the CLI (as benchmarks/ab_step.py builds
them), two warm-up steps, then `--steps` steps under MindSpore's Profiler; prints ms per step by
operator type and the costliest operators by name scope (the profiler's CPU op tables).
torch: transformers + PEFT as bench_vs_torch.py's torch side, under torch.profiler; prints its
key_averages table. Profiling slows both sides; compare shares, not absolute times.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def petrun_side(shape: str, steps: int) -> None:
    os.environ["PETRUN_COMPILE_CACHE"] = "0"
    import mindspore as ms
    import numpy as np
    from bench_vs_torch import SHAPES, THREADS, petrun_config
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.device_context.cpu.op_tuning.threads_num(THREADS)
    import petrun
    from petrun.models.registry import arch_entry
    from petrun.train.optim import build_optimizer
    from petrun.train.step import TrainStep
    s = SHAPES[shape]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = petrun.load_config(str(petrun_config(shape, s, 4, Path(tmp), [])))
    extra = arch_entry(cfg.get("model.arch.type")).extra_tokens
    ids = ms.Tensor(np.random.default_rng(0).integers(3, s["vocab"], (s["batch"], s["seq"] + extra)),
                    ms.int32)
    ms.set_seed(0)
    model = petrun.build_model(cfg)
    model.set_train(True)
    opt = build_optimizer(list(model.trainable_params()), cfg.get("optimizer") or {},
                          np.full(100, 1e-4, np.float32))
    step = TrainStep(model, opt, 1.0, None, 1.0, True)
    step.set_train(True)
    for _ in range(2):
        step(ids, ids)[0].asnumpy()
    with tempfile.TemporaryDirectory() as out:
        prof = ms.Profiler(output_path=out)
        for _ in range(steps):
            t0 = time.perf_counter()
            step(ids, ids)[0].asnumpy()
            print(f"step {time.perf_counter() - t0:.2f} s")
        prof.stop()
        prof.analyse()
        detail = next(Path(out).rglob("cpu_op_detail_info_*.csv"))
        by_type, by_scope, names = defaultdict(float), defaultdict(float), defaultdict(set)
        with open(detail, newline="") as f:
            for row in csv.DictReader(f):
                ms_per_step = float(row["op_total_time(ms)"]) / steps
                by_type[row["op_type"]] += ms_per_step
                # one scope for all layers: "layers-CellList/3-..." → "layers-CellList/L-..."
                scope = re.sub(r"/\d+-", "/L-", re.sub(r"-op\d+$", "", row["full_op_name"]))
                by_scope[f'{row["op_type"]} {scope}'] += ms_per_step
                names[f'{row["op_type"]} {scope}'].add(row["full_op_name"])
    total = sum(by_type.values())
    print(f"\nops total {total:,.0f} ms per step; by type:")
    for name, t in sorted(by_type.items(), key=lambda x: -x[1])[:20]:
        print(f"{t:8.1f} ms {100 * t / total:5.1f}%  {name}")
    print("\ncostliest by scope (all layers together; n = distinct ops):")
    for name, t in sorted(by_scope.items(), key=lambda x: -x[1])[:30]:
        print(f"{t:8.1f} ms  n {len(names[name]):3d}  {name}")


def torch_side(shape: str, steps: int) -> None:
    import torch
    from bench_vs_torch import SHAPES, THREADS, torch_train_model
    from torch.profiler import ProfilerActivity, profile
    torch.set_num_threads(THREADS)
    s = SHAPES[shape]
    model = torch_train_model(s)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    ids = torch.randint(3, s["vocab"], (s["batch"], s["seq"]))

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            print(f"step {time.perf_counter() - t0:.2f} s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> int:
    from bench_vs_torch import SHAPES
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["petrun", "torch"], default="petrun")
    ap.add_argument("--shape", default="small", choices=list(SHAPES))
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    (petrun_side if args.side == "petrun" else torch_side)(args.shape, args.steps)
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
