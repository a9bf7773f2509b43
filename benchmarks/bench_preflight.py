"""Speeds the unit tests used to assert (issue 17, defect 4), measured here instead.

    .venv/bin/python benchmarks/bench_preflight.py [--repeat 3]

1. `petrun finetune --config configs/llama2/lora_llama2_7b.yaml` on a CPU machine: wall time of the
   whole CLI process until the pre-flight refuses it (exit 2).
2. run_preflight of the tiny Llama2 config, in-process (config loaded; MindSpore never imported).
3. read_index of a 400 MB .ckpt (4 × [2048, 12800] fp32): only the headers are read.
4. The launcher stopping the other ranks when one fails (rank 1 exits 3 after 0.3 s; rank 0 would
   sleep 60 s): launch() wall time.
Prints one line per measurement (min/median/max over --repeat) and the 1-minute load average.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAKE = """
import os, sys, time
if os.environ["MS_ROLE"] == "MS_SCHED":
    sys.exit(0)
if os.environ.get("RANK_ID") == "1":
    time.sleep(0.3)
    sys.exit(3)
time.sleep(60)
"""


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def report(name: str, seconds: list[float]) -> None:
    ms = [x * 1000 for x in seconds]
    print(f"{name}: min {min(ms):.1f} ms, median {statistics.median(ms):.1f} ms, "
          f"max {max(ms):.1f} ms ({len(ms)} runs)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}", flush=True)

    def cli_7b():
        r = subprocess.run([sys.executable, "-m", "petrun", "finetune", "--config",
                            "configs/llama2/lora_llama2_7b.yaml"], cwd=ROOT, capture_output=True)
        assert r.returncode == 2, r.stderr
    report("7B finetune refused by the pre-flight (whole CLI process)", timed(cli_7b, a.repeat))

    from petrun.config import load_config
    from petrun.preflight import run_preflight
    with tempfile.TemporaryDirectory() as tmp:
        data = ROOT / "data/demo/alpaca_demo_seq256.jsonl"
        cfg = load_config(ROOT / "configs/llama2/lora_llama2_tiny.yaml",
                          [f"train_dataset.data_loader.dataset_dir={data}", "load_checkpoint=",
                           f"output_dir={tmp}/out"])
        report("tiny config pre-flight, in-process",
               timed(lambda: run_preflight(cfg, "finetune"), a.repeat))

        import mindspore as ms
        import numpy as np
        from mindspore import Parameter, Tensor

        from petrun.ckpt.index import read_index
        big = Path(tmp) / "big.ckpt"
        ms.save_checkpoint([Parameter(Tensor(np.zeros((2048, 12800), np.float32)), name=f"w{i}")
                            for i in range(4)], str(big))
        report("read_index of a 400 MB .ckpt", timed(lambda: read_index(big), a.repeat))

        import socket

        from petrun.parallel import launch as L
        fake = Path(tmp) / "fake.py"
        fake.write_text(FAKE)

        def launch_fail():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            res = L.launch(L.LaunchSpec(worker_num=2, master_port=port, grace_s=2,
                                        log_dir=str(Path(tmp) / "logs")), f"{fake} x")
            assert res.rc == 3, res.message
        report("launch: a failing rank stops the other (rank 0 would sleep 60 s)",
               timed(launch_fail, a.repeat))
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
