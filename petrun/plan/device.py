"""What the planner assumes about devices: peak FLOP/s, efficiency, memory, availability.

Figures and where they come from:
- CPU peak: 187 GFLOP/s fp32 matmul measured on the 2-core Zen 3 dev box with numpy sgemm
  (reference/feasibility.md §2), i.e. ~93.5 GFLOP/s per core; scaled by this machine's cores.
  MindSpore graph-mode training reached 49–53% of it (MFU by 4·N + attention, same section), so
  the step time assumes 50%. fp16 trains 2.8× slower than fp32 on CPU (feasibility.md §1b).
- Ascend: 256 TFLOPS fp16/bf16 per NPU — Huawei's published figure for the Ascend 910; 910B SKUs
  (Atlas 800T A2) are quoted at 280–320, so this is the conservative end. Efficiency 40% is an
  assumption typical of large-model training, not a measurement. Both can be overridden
  (`petrun plan --peak-tflops`, `--mfu`).
- Device memory: Ascend cards are 64 GB (Atlas 800T A2) or 32 GB (Atlas 800); the budget is
  context.max_device_memory when set (MindFormers ships "59GB" / "30GB"). On CPU the budget is
  the memory this machine has available now (MemAvailable, capped by a cgroup limit).
"""
from __future__ import annotations

import glob
import os
import re

CPU_GFLOPS_PER_CORE = 187.0 / 2
CPU_EFFICIENCY = 0.50
CPU_FP16_SLOWDOWN = 2.8
ASCEND_TFLOPS = 256.0
ASCEND_EFFICIENCY = 0.40
GPU_TFLOPS = 312.0          # A100 bf16 dense (NVIDIA datasheet); petrun does not target GPUs
GPU_EFFICIENCY = 0.40
ASCEND_CARD_GB = 64.0

_UNITS = {"k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}


def parse_size(text) -> int | None:
    """'59GB' / '64 GB' / '512MB' → bytes (binary units, as MindSpore reads max_device_memory)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KkMmGgTt])(?:i?[Bb])?\s*", str(text))
    if not m:
        return None
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def peak_flops(device_target: str, compute_dtype: str, peak_tflops: float | None = None,
               cores: int | None = None) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from)."""
    if peak_tflops:
        return float(peak_tflops) * 1e12, "user (--peak-tflops)"
    if device_target == "CPU":
        cores = cores or os.cpu_count() or 1
        peak = CPU_GFLOPS_PER_CORE * cores * 1e9
        src = f"CPU fp32 matmul, measured 93.5 GFLOP/s/core × {cores} cores"
        if compute_dtype == "float16":
            return peak / CPU_FP16_SLOWDOWN, src + f", ÷{CPU_FP16_SLOWDOWN} for fp16"
        return peak, src
    if device_target == "Ascend":
        return ASCEND_TFLOPS * 1e12, "Ascend 910 fp16 datasheet (256 TFLOPS)"
    return GPU_TFLOPS * 1e12, "A100 bf16 datasheet (312 TFLOPS)"


def efficiency(device_target: str, mfu: float | None = None) -> float:
    if mfu:
        return float(mfu)
    return {"CPU": CPU_EFFICIENCY, "Ascend": ASCEND_EFFICIENCY}.get(device_target, GPU_EFFICIENCY)


def available_ram() -> int | None:
    """Bytes this process could still allocate: MemAvailable, capped by the cgroup's headroom."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file, encoding="ascii") as f:
                raw = f.read().strip()
            if raw == "max" or int(raw) >= 2 ** 60:
                continue
            with open(usage_file, encoding="ascii") as f:
                headroom = int(raw) - int(f.read().strip())
            avail = headroom if avail is None else min(avail, headroom)
        except (OSError, ValueError):
            continue
    if avail is None:
        try:
            import psutil  # optional; only where /proc is missing
            avail = int(psutil.virtual_memory().available)
        except Exception:  # noqa: BLE001 - no way to tell: the caller skips the RAM check
            return None
    return avail


def total_ram() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def device_present(device_target: str) -> bool:
    """Whether this machine seems to have `device_target`, judged without importing MindSpore
    (a 3–5 s import): Ascend NPUs appear as /dev/davinciN (or the CANN toolkit is installed), GPUs
    as /dev/nvidiaN. The run's own check (petrun.parallel.context) stays authoritative; this only
    lets the pre-flight explain the problem in the same message as the memory estimate."""
    if device_target == "CPU":
        return True
    if device_target == "Ascend":
        return bool(glob.glob("/dev/davinci[0-9]*") or os.path.exists("/dev/davinci_manager")
                    or os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME")
                    or os.path.isdir("/usr/local/Ascend"))
    if device_target == "GPU":
        return bool(glob.glob("/dev/nvidia[0-9]*"))
    return False
