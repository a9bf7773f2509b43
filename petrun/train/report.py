"""What a finished training run reports: the summary line (losses, throughput, the adapter), the
measured peak memory beside the planner's estimate, and where its outputs are with the commands
to run next. The recipe (train/recipe.py) calls finish() once its last checkpoint is saved."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable

import numpy as np

from petrun.ckpt import layout


def finish(cfg, summary: dict, *, step: int, times: list, token_counts: list, wall_s: float,
           memory: dict, rank: int, log_dir: Path, ckpt_dir: Path,
           say: Callable[[str], None], warn: Callable[[str], None]) -> None:
    steady = times[1:] or times   # the first step includes the graph compile
    median = statistics.median(steady) if steady else 0.0
    summary.update(steps=step, wall_s=wall_s, first_step_s=times[0] if times else 0.0,
                   median_step_s=median,
                   tokens_per_second=(float(np.mean(token_counts)) / median
                                      if median and token_counts else 0.0))
    last = summary["checkpoints"][-1]["path"] if summary["checkpoints"] else "-"
    what = "adapter" if cfg.get("model.model_config.pet_config") else "checkpoint"
    losses = summary["losses"] or [float("nan")]
    # Single-batch losses are noisy; compare means over the first and last few steps.
    k = max(1, min(10, len(losses) // 5))
    say(f"done: {step} steps, mean loss of the first/last {k} steps "
        f"{np.mean(losses[:k]):.4f} → {np.mean(losses[-k:]):.4f}, "
        f"{summary['tokens_per_second']:,.0f} tok/s "
        f"(median step {median * 1000:.0f} ms, first step {summary['first_step_s']:.1f} s "
        f"incl. compile); {what}: {last}")
    if memory:
        from petrun.plan.measure import describe
        say(describe(memory))
    if rank == 0:
        _ending(cfg, log_dir, ckpt_dir, last, say, warn)


def measure_memory(cfg, metrics, summary: dict, say: Callable[[str], None]) -> dict:
    """Measured peak memory beside the planner's estimate, into metrics.jsonl and the summary
    (on an accelerator this is the measurement that calibrates the planner there)."""
    import mindspore as ms
    from petrun.plan.measure import memory_record
    try:
        rec = memory_record(cfg, ms.get_context("device_target"))
    except Exception as e:   # noqa: BLE001  a report never fails a finished run
        say(f"memory: not measured ({type(e).__name__}: {e})")
        return {}
    metrics.write(rec)
    summary["memory"] = rec
    return rec


def _ending(cfg, log_dir: Path, ckpt_dir: Path, last: str, say, warn) -> None:
    """Where the outputs are and what to run next, with the real paths."""
    metrics = log_dir / layout.METRICS_NAME
    png = log_dir / "training.png"
    try:
        from petrun.train.plot import plot, read_series
        plot([read_series(metrics, "this run")], png)
    except Exception as e:   # noqa: BLE001  a plot never fails a finished run
        warn(f"no plot written ({type(e).__name__}: {e})")
        png = None
    tb = cfg.get("tensorboard.tensorboard_dir")
    config = ckpt_dir / layout.CONFIG_NAME   # the resolved config, overrides included
    lines = [f"metrics: {metrics}" + (f"; plot: {png}" if png else "")
             + (f"; TensorBoard: tensorboard --logdir {tb}" if tb else "")]
    if cfg.get("model.model_config.pet_config") and last != "-":
        lines += ["next:",
                  f"  petrun predict --config {config} --adapter {ckpt_dir} --prompt \"...\"",
                  f"  petrun eval --config {config} --adapter {ckpt_dir} --eval_dataset_dir DATA",
                  "  petrun ckpt export-peft --help   # or merge: petrun ckpt merge --help"]
    say("\n".join(lines))
