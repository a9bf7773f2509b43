"""Faults real runs meet, through the real CLI on the tiny Llama2 LoRA config: a diverging update,
a collapse to zero gradients, two runs into one output_dir, the checkpoint folder deleted under a
running job. Each ends with a clear message, and nothing a later --resume, predict or eval picks
up holds the broken parameters."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, run_cli, step_records

CONFIG = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"
PREFIX = "llama2_tiny_lora_rank_0"


def _finetune(out: Path, *extra) -> subprocess.CompletedProcess:
    return run_cli("finetune", "--config", CONFIG, "--output_dir", out, "callbacks.0.per_print_times=1",
                   *extra)


def _latest(out: Path) -> str:
    return (out / "checkpoint" / "rank_0" / "latest").read_text().strip()


def _start(out: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "petrun", "finetune", "--config", str(CONFIG),
                             "--output_dir", str(out), *map(str, extra)], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 180) -> None:
    path = out / "log" / "rank_0" / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while True:
        if path.exists() and any(json.loads(line).get("step", 0) >= step and "loss" in line
                                 for line in path.read_text().splitlines() if line.endswith("}")):
            return
        assert proc.poll() is None, f"the run ended before step {step}:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, f"no step {step} after {timeout} s"
        time.sleep(0.05)


def test_a_diverged_update_never_becomes_latest(tmp_path):
    """The issue's reproduction: a good run, then --resume with an absurd learning rate and a save
    every step. The step-5 update leaves finite but enormous weights (saved), step 6's loss is
    NaN: step 5's checkpoint must not stay `latest`."""
    r = _finetune(tmp_path, "runner_config.stop_step=4", "callbacks.1.save_checkpoint_steps=2")
    assert r.returncode == 0, r.stdout + r.stderr
    r = _finetune(tmp_path, "--resume", "runner_config.stop_step=8", "optimizer.learning_rate=1e38",
                  "lr_schedule.learning_rate=1e38", "callbacks.1.save_checkpoint_steps=1")
    text = r.stdout + r.stderr
    assert r.returncode == 2, text
    assert "Traceback" not in text
    assert "training diverged" in text and "`latest` now points at step 4" in text
    # A bad update, not a bad batch: step 5's batch, fine before, fails on the new parameters.
    assert "loss nan, gradient norm nan at step 6" in text
    assert "the batch of step 5, which gave a finite loss before, now gives nan" in text
    assert _latest(tmp_path) == f"{PREFIX}-1_4"
    # A plain --resume continues from there, and the metrics keep one record per step.
    r = _finetune(tmp_path, "--resume", "runner_config.stop_step=6")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resumed from {tmp_path / 'checkpoint' / 'rank_0' / PREFIX}-1_4.ckpt (step 4" in r.stdout
    steps = [x["step"] for x in step_records(tmp_path)]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_inf_weights_are_never_saved(tmp_path):
    """lr 1e39 is inf in fp32: the first update (step 1, no warm-up) makes the weights inf, and the
    save after it must refuse them, while the step-2 checkpoint of a good start stays latest."""
    r = _finetune(tmp_path, "runner_config.stop_step=2", "callbacks.1.save_checkpoint_steps=2")
    assert r.returncode == 0, r.stdout + r.stderr
    r = _finetune(tmp_path, "--resume", "runner_config.stop_step=4", "optimizer.learning_rate=1e39",
                  "lr_schedule.learning_rate=1e39", "lr_schedule.warmup_ratio=0",
                  "callbacks.1.save_checkpoint_steps=1")
    text = r.stdout + r.stderr
    assert r.returncode == 2, text
    assert "Traceback" not in text
    assert "after step 3 the trained parameters hold" in text and "inf/NaN values" in text
    assert "this checkpoint was not saved" in text
    assert _latest(tmp_path) == f"{PREFIX}-1_2"
    assert not list((tmp_path / "checkpoint" / "rank_0").glob(f"{PREFIX}-1_3*"))


def test_a_collapse_to_zero_gradients_stops_the_run(tmp_path):
    """lr 1e6: three steps in, the weights saturate, the loss sits at ln(vocab) and every
    gradient is exactly 0; the old behaviour was exit 0 with every kept checkpoint collapsed."""
    r = _finetune(tmp_path, "runner_config.stop_step=12", "optimizer.learning_rate=1e6",
                  "lr_schedule.learning_rate=1e6", "callbacks.1.save_checkpoint_steps=1",
                  "callbacks.1.keep_checkpoint_max=20")
    text = r.stdout + r.stderr
    assert r.returncode == 2, text
    assert "Traceback" not in text
    assert "training collapsed" in text
    records = step_records(tmp_path)
    zero = [x["step"] for x in records if x["grad_norm"] == 0.0]
    since = zero[0]
    assert zero == list(range(since, since + 3)) and records[-1]["step"] == since + 2
    # ln(512): a uniform prediction over the tiny vocabulary
    assert abs(records[-1]["loss"] - 6.2383) < 1e-3
    assert _latest(tmp_path) == f"{PREFIX}-1_{since - 2}"


def test_a_second_run_into_the_same_output_dir_is_refused(tmp_path):
    first = _start(tmp_path, "runner_config.stop_step=20")
    try:
        _wait_for_step(first, tmp_path, 1)
        r = _finetune(tmp_path, "runner_config.stop_step=4", "model.model_config.pet_config.lora_rank=4")
        text = r.stdout + r.stderr
        assert r.returncode == 2, text
        assert "Traceback" not in text
        assert f"another petrun run is writing into {tmp_path} (pid {first.pid}" in text
        assert "--output_dir" in text
        out = first.communicate(timeout=300)[0]
    finally:
        first.kill()
    assert first.returncode == 0, out
    # Only the first run's checkpoints: all of its lora rank.
    config = (tmp_path / "checkpoint" / "rank_0" / "config.yaml").read_text()
    assert "lora_rank: 4" not in config
    assert [x["step"] for x in step_records(tmp_path)] == list(range(1, 21))


def test_a_deleted_checkpoint_folder_is_reported_and_recreated(tmp_path):
    run = _start(tmp_path, "runner_config.stop_step=12", "callbacks.1.save_checkpoint_steps=4")
    try:
        _wait_for_step(run, tmp_path, 5)
        shutil.rmtree(tmp_path / "checkpoint")
        out = run.communicate(timeout=300)[0]
    finally:
        run.kill()
    assert run.returncode == 0, out
    assert f"the checkpoint folder {tmp_path / 'checkpoint' / 'rank_0'} was deleted" in out
    assert "earlier checkpoints and config.yaml are gone" in out
    rank_dir = tmp_path / "checkpoint" / "rank_0"
    assert (rank_dir / "config.yaml").is_file()
    assert _latest(tmp_path) == f"{PREFIX}-1_12"
