"""Loss / learning-rate / eval plots of one or several runs, from their metrics.jsonl.

Every finetune writes one for itself (log/rank_0/training.png); `petrun plot RUN [RUN...]` draws
several runs on shared axes (say a rank-8 and a rank-16 LoRA). matplotlib with the Agg backend:
no display needed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from petrun.errors import UserError


@dataclass
class Series:
    label: str
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)


def metrics_file(run: str | Path) -> Path:
    """A run's rank-0 metrics: RUN may be the output_dir, its log/rank_N folder or the file."""
    p = Path(run)
    for candidate in (p, p / "metrics.jsonl", p / "log" / "rank_0" / "metrics.jsonl"):
        if candidate.is_file():
            return candidate
    raise UserError("no metrics.jsonl here", file=str(p), key="RUN",
                    fix="pass a run's output_dir (it holds log/rank_0/metrics.jsonl) or the file")


def read_series(run: str | Path, label: str | None = None) -> Series:
    """One record per step (the last one written, should an old file hold a step twice)."""
    path = metrics_file(run)
    steps: dict[int, dict] = {}
    evals: dict[int, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue   # the cut last line of a killed run
        if not isinstance(r.get("step"), int):
            continue
        if "loss" in r and "lr" in r:
            steps[r["step"]] = r
        elif r.get("event") == "eval" and "eval_loss" in r:
            evals[r["step"]] = r["eval_loss"]
    s = Series(label or str(run))
    for step in sorted(steps):
        s.steps.append(step)
        s.loss.append(steps[step]["loss"])
        s.lr.append(steps[step]["lr"])
    for step in sorted(evals):
        s.eval_steps.append(step)
        s.eval_loss.append(evals[step])
    return s


def plot(series: list[Series], out: str | Path):
    """Draw loss (and eval loss) over steps above the learning rate; write `out` (PNG),
    atomically. Returns the matplotlib Figure (callers may read back what was drawn)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from petrun.atomic import atomic_file
    if not any(s.steps for s in series):
        raise UserError("no training steps recorded yet", file=str(out), key="RUN",
                        fix="plot a run that has finished at least one step")
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, sharex=True, figsize=(8, 6),
                                         gridspec_kw={"height_ratios": [3, 1]})
    for s in series:
        line, = ax_loss.plot(s.steps, s.loss, label=f"{s.label} loss", linewidth=1.2)
        if s.eval_steps:
            ax_loss.plot(s.eval_steps, s.eval_loss, "o--", color=line.get_color(),
                         label=f"{s.label} eval loss")
        ax_lr.plot(s.steps, s.lr, color=line.get_color(), label=s.label)
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize="small")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.tight_layout()
    try:
        with atomic_file(out) as f:
            fig.savefig(f, format="png", dpi=100)
    except OSError as e:
        raise UserError(f"cannot write the plot ({e.strerror})", file=str(out), key="--out",
                        fix="choose a writable path") from None
    finally:
        plt.close(fig)
    return fig
