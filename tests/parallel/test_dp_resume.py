"""Issue 8's acceptance with 2 ranks under `petrun launch` (msrun's protocol, CPU workers):
kill -9 one worker mid-run; the launcher ends the job; `--resume` continues it, and every rank's
per-step losses and final adapter equal an uninterrupted 2-rank run's."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from petrun.parallel import launch as L
from tests.conftest import ROOT, run_cli
from tests.parallel.strategy_helpers import load
from tests.ports import free_port, with_free_port

pytestmark = pytest.mark.slow

TINY = "configs/llama2/lora_llama2_tiny.yaml"
STEPS = 8          # 32 samples / (2 ranks × batch 4) = 4 steps per epoch, 2 epochs, shuffled


def launch_argv(out: Path, data: Path, *extra, port: int | None = None) -> list[str]:
    return ["launch", "--worker-num", "2", "--master-port", str(port or free_port()),
            "--log-dir", str(out / "msrun_log"), "--",
            "petrun", "finetune", "--config", TINY, "--use_parallel", "True",
            "parallel.gradients_mean=True", "--train_dataset_dir", str(data),
            "runner_config.batch_size=4", "runner_config.epochs=2", f"output_dir={out}",
            "callbacks.0.per_print_times=1", "callbacks.1.save_checkpoint_steps=2",
            "callbacks.1.keep_checkpoint_max=3", *extra]


def records(out: Path, rank: int) -> list[dict]:
    path = out / "log" / f"rank_{rank}" / "metrics.jsonl"
    got = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            got.append(json.loads(line))
        except json.JSONDecodeError:     # a record cut short by kill -9
            pass
    return got


def losses(out: Path, rank: int) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(out, rank) if "loss" in r}


def final_adapter(out: Path, rank: int) -> dict[str, np.ndarray]:
    folder = out / "checkpoint" / f"rank_{rank}"
    stem = (folder / "latest").read_text().strip()
    return {k: v for k, v in load(folder / f"{stem}.ckpt").items() if "lora" in k}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train32.jsonl"
    lines = (ROOT / "data" / "demo" / "alpaca_demo_seq256.jsonl").read_text().splitlines()[:32]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, data) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    r = with_free_port(lambda port: run_cli(*launch_argv(out, data, port=port), timeout=300))
    assert r.returncode == 0, r.stdout + r.stderr
    for rank in (0, 1):
        assert sorted(losses(out, rank)) == list(range(1, STEPS + 1))
    assert losses(out, 0) != losses(out, 1), "the ranks saw different data"
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_a_worker_then_resume_matches_the_uninterrupted_run(tmp_path, data, baseline, seed):
    rng = random.Random(seed)
    victim, kill_after = rng.choice([0, 1]), rng.randint(2, STEPS - 2)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "petrun", *launch_argv(out, data)], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while max(losses(out, victim), default=0) < kill_after:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the job never reached the kill point"
            time.sleep(0.02)
        pids = {p["name"]: p["pid"] for p in
                json.loads((out / "msrun_log" / L.PROCS_FILE).read_text())["processes"]}
        os.kill(pids[f"rank {victim}"], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert f"rank {victim} was killed by SIGKILL" in err, err
    stopped_at = max(losses(out, victim))
    assert stopped_at < STEPS, "the run finished before the kill"

    r = with_free_port(lambda port: run_cli(*launch_argv(out, data, "--resume", port=port),
                                            timeout=300))
    text = r.stdout + r.stderr
    assert r.returncode == 0, text
    assert "Traceback" not in text
    for rank in (0, 1):
        got, want = losses(out, rank), losses(baseline, rank)
        assert sorted(got) == sorted(want)
        worst = max(abs(got[s] - want[s]) for s in want)
        assert worst <= 1e-6, (rank, {s: (got[s], want[s]) for s in want})
        mine, ref = final_adapter(out, rank), final_adapter(baseline, rank)
        assert sorted(mine) == sorted(ref) and len(mine) == 16
        for name in ref:
            assert np.array_equal(mine[name], ref[name]), (rank, name)
    resumed = [r for r in records(out, 0) if r.get("event") == "resume"]
    assert resumed and 0 < resumed[-1]["step"] <= stopped_at


def test_ranks_whose_newest_checkpoints_differ_resume_from_a_common_step(tmp_path, data, baseline):
    """kill -9 between two ranks' saves: rank 1 has renamed its step-8 checkpoint into place,
    rank 0 has not. Both must resume from step 6 (resuming rank 1 at 8 would pair rank 0's
    step-7 AllReduce with nothing)."""
    import shutil
    out = tmp_path / "run"
    shutil.copytree(baseline, out, ignore=shutil.ignore_patterns("msrun_log"))
    rank0 = out / "checkpoint" / "rank_0"
    newest = (rank0 / "latest").read_text().strip()
    assert newest.endswith("_4")                                  # epoch 2, step 4 of the epoch
    for f in (rank0 / f"{newest}.json", rank0 / f"{newest}.ckpt"):
        f.unlink()
    r = with_free_port(lambda port: run_cli(*launch_argv(out, data, "--resume", port=port),
                                            timeout=300))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rank 1 uses its step-6 checkpoint" in (out / "msrun_log" / "worker_1.log").read_text()
    for rank in (0, 1):
        resumed = [x for x in records(out, rank) if x.get("event") == "resume"]
        assert resumed[-1]["step"] == 6
        got, want = losses(out, rank), losses(baseline, rank)
        assert max(abs(got[s] - want[s]) for s in want) <= 1e-6
        mine, ref = final_adapter(out, rank), final_adapter(baseline, rank)
        for name in ref:
            assert np.array_equal(mine[name], ref[name]), (rank, name)
