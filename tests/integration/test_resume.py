"""Issue 8's acceptance, through the real CLI: kill -9 a run (at seeded random points, and in the
middle of a save), SIGTERM it, Ctrl-C it (while the model loads, before the first step, in the
middle of a save, at seeded random points up to the first step's compile and inside steps), damage
its newest checkpoint; then `--resume` and require every step's loss to equal an uninterrupted
run's (≤ 1e-6) and the final adapter to be identical.

The data is 32 demo samples (4 batches of 8 per epoch) over 3 epochs with shuffling, so resumes
land mid-epoch and exactly on epoch boundaries. The 2-rank (msrun) version of these tests waits
for the launch issue.
"""
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli

CONFIG = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"
STEPS = 12
PREFIX = "llama2_tiny_lora_rank_0"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    # MindSpore's compile cache: every run using it compiles the same graph; reusing it saves
    # ~7 s per process (the numerics are the graph's, cached or not). Only for one config: the
    # cache does not key on parameter shapes.
    return {"MS_COMPILER_CACHE_ENABLE": "1",
            "MS_COMPILER_CACHE_PATH": str(tmp_path_factory.mktemp("compile_cache"))}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train32.jsonl"
    lines = (ROOT / "data" / "demo" / "alpaca_demo_seq256.jsonl").read_text().splitlines()[:32]
    path.write_text("\n".join(lines) + "\n")
    return path


def _args(out: Path, data: Path) -> list:
    return ["finetune", "--config", CONFIG, "--output_dir", out, "--train_dataset_dir", data,
            "runner_config.epochs=3", f"runner_config.stop_step={STEPS}",
            "callbacks.0.per_print_times=1", "callbacks.1.save_checkpoint_steps=2",
            "callbacks.1.keep_checkpoint_max=3"]


def _records(out: Path) -> list[dict]:
    path = out / "log" / "rank_0" / "metrics.jsonl"
    if not path.exists():
        return []
    # A record cut short by kill -9 is not JSON; the resumed run starts on a fresh line.
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _losses(out: Path) -> dict[int, float]:
    """step -> loss; a resumed run's records supersede the killed run's for the same step."""
    return {r["step"]: r["loss"] for r in _records(out) if "loss" in r}


def _latest(out: Path) -> str:
    return (out / "checkpoint" / "rank_0" / "latest").read_text().strip()


def _adapter(out: Path) -> dict[str, np.ndarray]:
    import mindspore as ms
    path = out / "checkpoint" / "rank_0" / f"{_latest(out)}.ckpt"
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, data, env):
    out = tmp_path_factory.mktemp("uninterrupted")
    r = run_cli(*_args(out, data), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    losses = _losses(out)
    assert sorted(losses) == list(range(1, STEPS + 1))
    step_time = statistics.median(r["step_time_s"] for r in _records(out) if "loss" in r)
    return {"out": out, "losses": losses, "adapter": _adapter(out), "step_time": step_time, "env": env}


def _start(out: Path, data: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "petrun", *map(str, _args(out, data))], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before {what}:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _resume_and_compare(out: Path, data: Path, baseline: dict, again=("--resume",)) -> str:
    """Run again (the same command plus `again`) and require the uninterrupted run's results."""
    r = run_cli(*_args(out, data), *again, env=baseline["env"])
    text = r.stdout + r.stderr
    assert r.returncode == 0, text
    assert "Traceback" not in text
    got, want = _losses(out), baseline["losses"]
    assert sorted(got) == sorted(want), text
    # The steps the killed run wrote and the resumed run trained again are not listed twice.
    steps = [r["step"] for r in _records(out) if "loss" in r]
    assert len(steps) == len(set(steps)), steps
    worst = max(abs(got[s] - want[s]) for s in want)
    assert worst <= 1e-6, {s: (got[s], want[s]) for s in want}
    adapter = _adapter(out)
    assert sorted(adapter) == sorted(baseline["adapter"])
    for name, value in baseline["adapter"].items():
        assert np.array_equal(adapter[name], value), name
    return text


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow),
                                  pytest.param(2, marks=pytest.mark.slow)])
def test_kill_9_at_a_random_point_then_resume_matches_the_uninterrupted_run(tmp_path, data, baseline, seed):
    rng = random.Random(seed)
    after_step = rng.randint(2, STEPS - 3)   # checkpoints every 2 steps: at least one is saved
    delay = rng.random() * baseline["step_time"] * 1.5   # anywhere in the next step, or its save
    proc = _start(tmp_path, data, baseline["env"])
    _wait_for(proc, lambda: max(_losses(tmp_path), default=0) >= after_step
              and (tmp_path / "checkpoint" / "rank_0" / "latest").exists(),
              f"step {after_step} and a saved checkpoint")
    time.sleep(delay)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(_losses(tmp_path), default=0)
    assert killed_at < STEPS, "the run finished before the kill; pick an earlier point"
    saved = json.loads((tmp_path / "checkpoint" / "rank_0" / f"{_latest(tmp_path)}.json")
                       .read_text())["step"]
    text = _resume_and_compare(tmp_path, data, baseline)
    assert f"(step {saved}, epoch" in text and "starting from step 0" not in text


def test_kill_9_during_a_save_keeps_the_previous_checkpoint(tmp_path, data, baseline):
    """The test hook pauses every file replacement; we kill while the step-4 checkpoint's
    training state sits in its temporary file (its adapter already renamed into place)."""
    rank_dir = tmp_path / "checkpoint" / "rank_0"
    proc = _start(tmp_path, data, {**baseline["env"], "PETRUN_TEST_PAUSE_BEFORE_REPLACE": "0.5"})
    _wait_for(proc, lambda: list((rank_dir / "train_state").glob(f".{PREFIX}-1_4.partial-*.ckpt")),
              "the step-4 save")
    proc.kill()
    proc.wait()
    assert (rank_dir / f"{PREFIX}-1_4.ckpt").exists()           # renamed before the kill
    assert not (rank_dir / f"{PREFIX}-1_4.json").exists()       # so no manifest: not a checkpoint
    assert _latest(tmp_path) == f"{PREFIX}-1_2"
    text = _resume_and_compare(tmp_path, data, baseline)
    assert f"resumed from {rank_dir / PREFIX}-1_2.ckpt (step 2" in text
    assert not [p for p in rank_dir.rglob("*") if ".partial-" in p.name]


def test_sigterm_saves_at_the_next_step_boundary_and_exits_cleanly(tmp_path, data, baseline):
    proc = _start(tmp_path, data, baseline["env"])
    _wait_for(proc, lambda: max(_losses(tmp_path), default=0) >= 3, "step 3")
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "Traceback" not in output
    stopped = max(_losses(tmp_path))
    assert stopped < STEPS
    assert f"stopped by SIGTERM after step {stopped}/{STEPS}" in output
    manifest = json.loads((tmp_path / "checkpoint" / "rank_0" / f"{_latest(tmp_path)}.json").read_text())
    assert manifest["step"] == stopped
    assert manifest["consumed_samples"] == stopped * 8
    _resume_and_compare(tmp_path, data, baseline)


def test_a_truncated_checkpoint_is_skipped_for_the_previous_one(tmp_path, data, baseline):
    out = tmp_path / "run"
    shutil.copytree(baseline["out"], out)
    newest = out / "checkpoint" / "rank_0" / f"{_latest(out)}.ckpt"   # step 12
    size = newest.stat().st_size
    os.chmod(newest, 0o600)
    with open(newest, "r+b") as f:
        f.truncate(size - 100)
    text = _resume_and_compare(out, data, baseline)
    assert f"skipping damaged checkpoint {newest.stem} (step {STEPS})" in text
    assert f"has {size - 100} bytes, the manifest says {size}" in text
    assert f"resumed from {newest.parent / PREFIX}-3_2.ckpt (step {STEPS - 2}" in text
    # keep_checkpoint_max 3 still holds after the resumed run re-saved step 12.
    assert sorted(p.name for p in newest.parent.glob("*.ckpt")) == [
        f"{PREFIX}-2_4.ckpt", f"{PREFIX}-3_2.ckpt", f"{PREFIX}-3_4.ckpt"]


@pytest.mark.slow
def test_accumulation_and_dynamic_loss_scale_resume_exactly(tmp_path, data):
    """Gradient accumulation 2 and a dynamic loss scale that grows every 2 steps: the restored
    loss scale and its update counters must give the same scales and losses as no interruption.
    Resumes from an explicit checkpoint file of another output_dir."""
    args = ["finetune", "--config", CONFIG, "--train_dataset_dir", data, "runner_config.epochs=3",
            "runner_config.stop_step=6", "runner_config.gradient_accumulation_steps=2",
            "callbacks.1.save_checkpoint_steps=1", "callbacks.1.keep_checkpoint_max=10",
            "runner_wrapper.scale_sense={type: DynamicLossScaleUpdateCell, loss_scale_value: 1024, "
            "scale_window: 2}"]
    first, second = tmp_path / "first", tmp_path / "second"
    # A compile cache of its own: MindSpore's cache does not key on parameter shapes, and this
    # config's lr schedule is shorter than the other tests' (a shared cache fails the next run).
    env = {"MS_COMPILER_CACHE_ENABLE": "1", "MS_COMPILER_CACHE_PATH": str(tmp_path / "cache")}
    r = run_cli(*args, "--output_dir", first, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    mid = first / "checkpoint" / "rank_0" / f"{PREFIX}-2_1.ckpt"      # step 3: mid-epoch 2
    r = run_cli(*args, "--output_dir", second, "--resume", mid, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(step 3, epoch 2, 2 batches of it already trained); loss scale 2048" in r.stdout

    def by_step(out):
        return {x["step"]: (x["loss"], x["loss_scale"]) for x in _records(out) if "loss" in x}
    want, got = by_step(first), by_step(second)
    assert sorted(got) == [4, 5, 6]
    for step, (loss, scale) in got.items():
        assert scale == want[step][1] and abs(loss - want[step][0]) <= 1e-6, (step, got, want)
    a, b = _adapter(first), _adapter(second)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_run_manifest_records_each_invocation(baseline):
    manifest = json.loads((baseline["out"] / "run_manifest.json").read_text())
    (run,) = manifest["invocations"]
    assert run["command"].startswith("__main__.py finetune --config") or "finetune --config" in run["command"]
    assert {"petrun", "mindspore", "numpy", "python"} <= set(run["versions"])
    (data_file,) = run["data_files"]
    assert len(data_file["sha256"]) == 64 and data_file["bytes"] > 0
    assert run["seed"] == 0 and run["resumed_from"] is None
    assert run["config"]["runner_config"]["stop_step"] == STEPS
    assert run["load_checkpoint"][0]["path"].endswith("llama2_tiny_base.ckpt")


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 180.0) -> str:
    """Read the run's output up to the line holding `text`; returns what was read."""
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"no line with {text!r}:\n{''.join(seen)}")


def _nothing_half_written(out: Path) -> None:
    assert not [p for p in out.rglob("*") if ".partial-" in p.name]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_model_loads_says_that_nothing_was_saved(tmp_path, data, baseline, sig):
    """Before the training loop's handler exists, Ctrl-C (and SIGTERM: by default it ended the
    process without a word) interrupts at once (a model load can take minutes): exit 128 +
    signal, what happened and what to do, no traceback, no checkpoint."""
    proc = _start(tmp_path, data, {**baseline["env"], "PETRUN_TEST_PAUSE_AT": "setup_model:120"})
    head = _wait_for_line(proc, "test hook: pausing at setup_model")
    proc.send_signal(sig)
    text = head + proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + sig, text
    assert "Traceback" not in text
    assert (f"stopped by {sig.name} before the first training step: nothing was trained or "
            "saved; no checkpoint was written; start again with the same command.") in text
    assert not list(tmp_path.rglob("*.ckpt"))
    _nothing_half_written(tmp_path)


def test_ctrl_c_between_the_load_and_the_first_step_stops_cleanly(tmp_path, data, baseline):
    """The window after "loaded …" (cells built, resume state, run manifest) and before the
    first step: the Ctrl-C waits for the first step's start, then the run stops with a message
    (it used to end silently), having written no checkpoint; the same command starts over and
    trains exactly the uninterrupted run."""
    proc = _start(tmp_path, data, {**baseline["env"], "PETRUN_TEST_PAUSE_AT": "first_step:120"})
    head = _wait_for_line(proc, "test hook: pausing at first_step")
    assert "loaded " in head
    proc.send_signal(signal.SIGINT)
    text = head + proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    assert ("stopped by SIGINT before the first training step: nothing was trained or saved; no "
            "checkpoint was written; start again with the same command.") in text
    assert not list(tmp_path.rglob("*.ckpt")) and not _losses(tmp_path)
    _nothing_half_written(tmp_path)
    # A stop is no error: error.log holds no "internal error" traceback for it.
    errors = tmp_path / "log" / "rank_0" / "error.log"
    assert not errors.exists() or "internal error" not in errors.read_text()
    _resume_and_compare(tmp_path, data, baseline, again=())


def test_ctrl_c_during_a_save_finishes_it_then_stops(tmp_path, data, baseline):
    """SIGINT while the step-4 checkpoint's files are being renamed into place (the test hook
    pauses each rename): the save completes, the run stops after step 4 with exit 130, and the
    resumed run equals the uninterrupted one."""
    rank_dir = tmp_path / "checkpoint" / "rank_0"
    proc = _start(tmp_path, data, {**baseline["env"], "PETRUN_TEST_PAUSE_BEFORE_REPLACE": "0.5"})
    _wait_for(proc, lambda: list(rank_dir.rglob(f".{PREFIX}-1_4.partial-*")), "the step-4 save")
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    assert f"stopped by SIGINT after step 4/{STEPS}; checkpoint: {rank_dir / PREFIX}-1_4.ckpt" in text
    assert _latest(tmp_path) == f"{PREFIX}-1_4"
    _nothing_half_written(tmp_path)
    text = _resume_and_compare(tmp_path, data, baseline)
    assert f"resumed from {rank_dir / PREFIX}-1_4.ckpt (step 4" in text


@pytest.mark.parametrize("seed", [0] + [pytest.param(s, marks=pytest.mark.slow) for s in (1, 2, 3)])
def test_ctrl_c_at_a_random_point_then_resume_matches_the_uninterrupted_run(tmp_path, data,
                                                                            baseline, seed):
    """Seeded random points: even seeds anywhere from "loaded …" to the end of the first step's
    compile, odd seeds inside a step after step 2..9. Whatever the point, one clean stop (exit
    130, or 143 where MindSpore, which owns SIGINT while a graph runs, turned it into SIGTERM),
    nothing half-written, and --resume trains exactly the uninterrupted run."""
    rng = random.Random(seed)
    proc = _start(tmp_path, data, baseline["env"])
    if seed % 2 == 0:   # within the first step's time after "loaded", and before the run ends
        head = _wait_for_line(proc, "loaded ")    # (a warm compile cache shortens the first step)
        first = next(r["step_time_s"] for r in _records(baseline["out"]) if "loss" in r)
        time.sleep(rng.random() * min(first, (STEPS - 1) * baseline["step_time"]))
    else:
        head = ""
        after = rng.randint(2, STEPS - 3)
        _wait_for(proc, lambda: max(_losses(tmp_path), default=0) >= after, f"step {after}")
        time.sleep(rng.random() * baseline["step_time"])
    proc.send_signal(signal.SIGINT)
    text = head + proc.communicate(timeout=120)[0]
    assert proc.returncode in (130, 143), text
    assert "Traceback" not in text and "stopped by SIG" in text, text
    _nothing_half_written(tmp_path)
    if (tmp_path / "checkpoint" / "rank_0" / "latest").exists():
        stopped = max(_losses(tmp_path))
        assert f"after step {stopped}/{STEPS}" in text and _latest(tmp_path).endswith(
            f"-{(stopped - 1) // 4 + 1}_{(stopped - 1) % 4 + 1}")
    _resume_and_compare(tmp_path, data, baseline)
