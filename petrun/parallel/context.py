"""MindSpore context from the config's `context` section (and, later, the parallel context)."""
from __future__ import annotations

import logging
import os

from petrun.errors import UserError

log = logging.getLogger("petrun")


def target_available(name: str) -> bool:
    """Whether this MindSpore build can run on `name` (the PyPI CPU wheel runs only CPU)."""
    if name == "CPU":
        return True
    import mindspore as ms
    try:
        return bool(ms.hal.is_available(name))
    except Exception:  # hal API differences across releases: treat as unavailable
        return False


def setup_context(cfg) -> str:
    """Apply `context` (mode, device_target, device_id, max_device_memory); return the target."""
    import mindspore as ms

    ctx = cfg.get("context") or {}
    target = ctx.get("device_target", "CPU")
    if not target_available(target):
        raise UserError(
            f"context.device_target is {target}, but this MindSpore build cannot run on it "
            "(the PyPI wheel is CPU-only)", file=cfg.origin("context.device_target"),
            key="context.device_target",
            fix="add the override context.device_target=CPU (and a model size that fits this machine), "
                "or run on a machine with that backend installed")
    if cfg.get("use_parallel"):
        raise UserError("use_parallel True needs a distributed launch through msrun, which this "
                        "version of petrun cannot start yet", key="use_parallel",
                        file=cfg.origin("use_parallel"), fix="run with --use_parallel False")
    mode = ms.GRAPH_MODE if int(ctx.get("mode", 0)) == 0 else ms.PYNATIVE_MODE
    kwargs = {"mode": mode, "device_target": target}
    if ctx.get("max_call_depth"):
        kwargs["max_call_depth"] = int(ctx["max_call_depth"])
    if target != "CPU":
        if ctx.get("max_device_memory"):
            kwargs["max_device_memory"] = ctx["max_device_memory"]
        # Under msrun the device follows the local rank (MindFormers drops device_id there).
        if "MS_ROLE" not in os.environ and ctx.get("device_id") is not None:
            kwargs["device_id"] = int(ctx["device_id"])
    ms.set_context(**kwargs)
    return target


def set_seed(seed: int) -> None:
    import random

    import mindspore as ms
    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)
