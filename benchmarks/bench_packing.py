"""Useful tokens per second: padded vs length bucketing vs packing, on variable-length data.

Runs the real CLI (`petrun finetune`, tiny Llama2 LoRA config) for one epoch over the bundled
alpaca demo samples (seq_length 256; lengths vary from a few dozen tokens to 257), once per mode,
and reads the per-step times from metrics.jsonl. Useful tokens are the samples' real tokens
(everything before the trailing padding): the same set in every mode, so useful tokens/s is
"how fast the same data is consumed". The first step (graph compile) is replaced by the median
step of its run; bucketing compiles one graph per bucket width, and those compiles are left out
the same way (each width's first step). Usage:

    .venv/bin/python benchmarks/bench_packing.py [--repeat 2] [--data PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from petrun.data.packing import real_length  # noqa: E402

CONFIG = ROOT / "configs/llama2/lora_llama2_tiny.yaml"
MODES = {"padded": [], "bucketing": ["train_dataset.bucketing=True"],
         "packing": ["train_dataset.packing=True"]}


def useful_tokens(path: Path, pad_id: int = 0) -> int:
    total = 0
    for line in path.read_text().splitlines():
        r = json.loads(line)
        total += real_length(np.array(r["input_ids"]), np.array(r["labels"]), pad_id)
    return total


def run(mode: str, data: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "petrun", "finetune", "--config", str(CONFIG), "--output_dir", str(out),
           "--train_dataset_dir", str(data), "runner_config.epochs=1", "callbacks.1.save_checkpoint_steps=1000",
           *MODES[mode]]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "GLOG_v": "3"})
    if r.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{r.stdout}\n{r.stderr}")
    recs = [json.loads(x) for x in (out / "log/rank_0/metrics.jsonl").read_text().splitlines()]
    recs = [x for x in recs if "loss" in x]
    seen, times = set(), []
    for x in recs:      # drop each graph's compile step (first step of each input width)
        width = x["tokens"]
        times.append(None if width not in seen else x["step_time_s"])
        seen.add(width)
    median = statistics.median(t for t in times if t is not None)
    wall = sum(median if t is None else t for t in times)
    summary = next((line for line in r.stdout.splitlines() if line.startswith("packing:")), "")
    return {"steps": len(recs), "seconds": wall, "model_tokens": sum(x["tokens"] for x in recs),
            "summary": summary, "final_loss": float(np.mean([x["loss"] for x in recs[-5:]]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data/demo/alpaca_demo_seq256.jsonl")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    useful = useful_tokens(args.data)
    print(f"data: {args.data} — {useful:,} useful tokens", flush=True)
    print("| mode | optimizer steps | model tokens | train time (s) | useful tokens/s | vs padded |")
    print("|---|---:|---:|---:|---:|---:|")
    base = None
    for mode in MODES:
        runs = []
        for i in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(run(mode, args.data, Path(tmp) / "out"))
        best = min(runs, key=lambda r: r["seconds"])
        rate = useful / best["seconds"]
        base = base or rate
        print(f"| {mode} | {best['steps']} | {best['model_tokens']:,} | {best['seconds']:.2f} | "
              f"{rate:,.0f} | {rate / base:.2f}× |", flush=True)
        if best["summary"]:
            print(f"  ({best['summary']})", flush=True)


if __name__ == "__main__":
    main()
