"""Learning-rate schedules as one value per optimizer step (MindFormers' formulas, §8.2).

Precomputing the whole schedule keeps the graph free of schedule logic and makes resuming exact:
the optimizer indexes this array with its own global step.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from petrun.errors import UserError

ALIASES = {"cosine": "CosineWithWarmUpLR", "ConstantWarmUpLR": "constant", "LinearWithWarmUpLR": "linear",
           "PolynomialWithWarmUpLR": "polynomial"}


def warmup_steps(cfg: Mapping, total: int) -> int:
    if cfg.get("warmup_ratio") not in (None, "None"):
        return int(total * float(cfg["warmup_ratio"]))
    return int(cfg.get("warmup_steps") or 0)


def schedule(cfg: Mapping, total_steps: int) -> np.ndarray:
    """float32 array of length total_steps for the `lr_schedule` section."""
    kind = ALIASES.get(cfg.get("type", "constant"), cfg.get("type", "constant"))
    lr = float(cfg.get("learning_rate", 1e-5))
    lr_end = float(cfg.get("lr_end", 1e-7 if kind == "polynomial" else 0.0))
    total = int(cfg.get("total_steps") or -1)
    total = total_steps if total <= 0 else total
    warm = min(warmup_steps(cfg, total), total)
    init = float(cfg.get("warmup_lr_init", 0.0))
    decay = int(cfg.get("decay_steps") or total)
    out = np.empty(total_steps, dtype=np.float64)
    for step in range(total_steps):
        if step < warm:
            out[step] = init + (lr - init) * step / max(1, warm)
            continue
        progress = (step - warm) / max(1, total - warm)
        if kind == "constant":
            out[step] = lr
        elif kind == "CosineWithWarmUpLR":
            cycles = float(cfg.get("num_cycles", 0.5))
            value = lr_end + (lr - lr_end) * max(0.0, 0.5 * (1 + math.cos(math.pi * 2 * cycles * progress)))
            out[step] = lr_end if step >= decay else value
        elif kind == "linear":
            out[step] = lr_end + (lr - lr_end) * max(0.0, 1 - progress)
        elif kind == "polynomial":
            power = float(cfg.get("power", 1.0))
            frac = min(1.0, (step - warm) / max(1, decay - warm))
            out[step] = (lr - lr_end) * (1 - frac) ** power + lr_end
        else:
            raise UserError(f"unknown lr_schedule type {cfg.get('type')!r}", key="lr_schedule.type",
                            fix="use cosine (CosineWithWarmUpLR), constant, linear or polynomial")
    return out.astype(np.float32)
