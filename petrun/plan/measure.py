"""What a run really used, set beside what the planner predicted: every finetune closes the loop.

CPU: the process's peak resident set (ru_maxrss), the number the CPU constants were fitted on
(benchmarks/plan_vs_measured.py). Ascend/GPU: the peak of MindSpore's device memory pool
(runtime.max_memory_reserved, what counts against context.max_device_memory) and the peak held
by tensors (max_memory_allocated). A run on an accelerator thus records the measurement the
Ascend side of the planner has never had (issue 10), in metrics.jsonl, without extra tooling.
"""
from __future__ import annotations

import resource
import sys

GiB = 2 ** 30


def measured_peak(device_target: str) -> dict:
    """{"measured_peak": bytes, "measure": what was read} for this process, so far."""
    if device_target == "CPU":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes.
        return {"measured_peak": int(peak if sys.platform == "darwin" else peak * 1024),
                "measure": "peak RSS of this process"}
    import mindspore as ms
    api = getattr(ms, "runtime", None)
    if api is None or not hasattr(api, "max_memory_reserved"):
        api = ms.hal   # MindSpore < 2.5
    return {"measured_peak": int(api.max_memory_reserved()),
            "measured_allocated": int(api.max_memory_allocated()),
            "measure": f"peak of MindSpore's {device_target} memory pool"}


def planned_peak(cfg, run_mode: str = "finetune") -> dict:
    """The planner's estimate for `cfg` as {"planned_peak", "planned_parts"}; {} if it has none
    (a report must never fail a run that has finished)."""
    try:
        from petrun.plan.estimator import estimate
        est = estimate(cfg, run_mode=run_mode)
    except Exception:   # noqa: BLE001  e.g. an architecture the analytic tables do not know
        return {}
    parts = {k: round(getattr(est, k)) for k in
             ("weights", "gradients", "optimizer", "activations", "head", "kv_cache", "runtime",
              "load_extra")}
    return {"planned_peak": round(est.peak), "planned_parts": parts}


def memory_record(cfg, device_target: str, run_mode: str = "finetune") -> dict:
    """The metrics.jsonl record: measured and planned peak, and how far apart they are."""
    rec = {"event": "memory", "device_target": device_target, **measured_peak(device_target),
           **planned_peak(cfg, run_mode)}
    if rec.get("planned_peak") and rec["measured_peak"]:
        rec["plan_error"] = round(rec["planned_peak"] / rec["measured_peak"] - 1, 4)
    return rec


def describe(rec: dict) -> str:
    """One line for the console: 'memory: measured peak 1.23 GiB (…); planned 1.10 GiB, 10.6%
    low'."""
    text = f"memory: measured peak {_gib(rec['measured_peak'])} ({rec['measure']})"
    if rec.get("planned_peak"):
        text += f"; planned {_gib(rec['planned_peak'])}"
        if "plan_error" in rec:
            err = rec["plan_error"]
            text += f", {abs(err) * 100:.1f}% {'high' if err > 0 else 'low'}" if err else ", exact"
    return text


def _gib(n: float) -> str:
    return f"{n / GiB:,.2f} GiB" if n >= 0.1 * GiB else f"{n / 2 ** 20:,.0f} MiB"
