"""Speed and peak memory of the tiny LoRA demo finetune (graph and PyNative mode).

    .venv/bin/python benchmarks/bench_finetune.py [--steps 40] [--repeat 2]

Runs the real CLI (`petrun finetune --config configs/llama2/lora_llama2_tiny.yaml`) in a child
process per mode, reads per-step times from its metrics.jsonl and the child's peak RSS from
wait4(). Tokens per step = batch × seq_length (what the model processes, padding included).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"


def run(mode: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "petrun", "finetune", "--config", str(CONFIG), "--output_dir", out,
               f"runner_config.stop_step={steps}", f"context.mode={mode}",
               "callbacks.1.save_checkpoint_steps=100000"]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise SystemExit(f"run failed: {proc.stderr.read().decode()[-2000:]}")
        rows = [json.loads(line) for line in (Path(out) / "log" / "rank_0" / "metrics.jsonl").open()
                if line.startswith('{"step"')]
    times = [r["step_time_s"] for r in rows]
    tokens = 8 * 256  # tiny config: batch 8 × seq_length 256
    median = statistics.median(times[1:])
    return {"mode": "graph" if mode == 0 else "pynative", "steps": len(times),
            "first_step_s": times[0], "median_step_ms": median * 1000,
            "tokens_per_s": tokens / median, "peak_rss_mib": usage.ru_maxrss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    results = [run(mode, args.steps) for mode in (0, 1) for _ in range(args.repeat)]
    load = os.getloadavg()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load:.2f}; python {platform.python_version()}")
    print("| mode | steps | first step (compile) s | median step ms | tokens/s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['mode']} | {r['steps']} | {r['first_step_s']:.1f} | {r['median_step_ms']:.0f} | "
              f"{r['tokens_per_s']:,.0f} | {r['peak_rss_mib']:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
