"""Failure battery cases that are not one refused command line (those are in
tests/test_hostile_inputs.py): a loss that turns NaN at step k because of a bad batch (skipped,
named, training goes on; three in a row stop the run), and a disk that fills up under `petrun data
prepare`. Each stop ends with exit 2, one message naming the step or file and a Fix, no traceback,
and nothing lost."""
import hashlib
import json
import subprocess

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli

CONFIG = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"
DEMO = ROOT / "data" / "demo"
PREFIX = "llama2_tiny_lora_rank_0"


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def _poisoned_run(tmp_path, bad_rows, *extra):
    """Token id P occurs only in `bad_rows` of the first 32 demo samples (no shuffle, batch 8:
    rows 8k..8k+7 are step k+1's), and the base checkpoint's embedding row P is NaN: those steps
    have a NaN loss on parameters that are fine."""
    import mindspore as ms

    rows = [json.loads(x) for x in (DEMO / "alpaca_demo_seq256.jsonl").read_text().splitlines()[:32]]
    used = {i for r in rows for i in r["input_ids"]}
    poison = next(i for i in range(3, 512) if i not in used)
    for k in bad_rows:
        rows[k]["input_ids"][5] = poison
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    params = ms.load_checkpoint(str(DEMO / "llama2_tiny_base.ckpt"))
    name = "model.tok_embeddings.embedding_weight"
    table = params[name].asnumpy().copy()
    table[poison] = np.nan
    params[name] = ms.Parameter(ms.Tensor(table), name=name)
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(tmp_path / "base.ckpt"))
    out = tmp_path / "out"
    r = run_cli("finetune", "--config", CONFIG, "--train_dataset_dir", data, "--load_checkpoint",
                tmp_path / "base.ckpt", "--output_dir", out, "train_dataset.data_loader.shuffle=False",
                "runner_config.epochs=1", "callbacks.1.save_checkpoint_steps=1",
                "callbacks.1.keep_checkpoint_max=10", *extra)
    return r, out / "checkpoint" / "rank_0"


def test_a_bad_batch_is_skipped_with_its_samples_named_and_training_goes_on(tmp_path):
    """The batch of step 3 is bad, the parameters are not: its update is skipped (the step-3
    checkpoint equals step 2's, byte for byte in every tensor), the warning names the step and its
    samples, and the run ends normally with `latest` at its last step (it used to stop at step 3
    and step `latest` back past the intact step-2 checkpoint)."""
    import mindspore as ms

    r, rank = _poisoned_run(tmp_path, range(16, 24), "runner_config.stop_step=4")
    text = r.stdout + r.stderr
    assert r.returncode == 0, text
    assert "Traceback" not in text
    assert "loss nan, gradient norm nan at step 3: a bad batch (samples " \
           + ", ".join(map(str, range(16, 24))) + " of epoch 1); its update was skipped" in text
    assert "the parameters still give a finite loss on the batch of step 2" in text
    records = [json.loads(x) for x in (tmp_path / "out" / "log" / "rank_0" / "metrics.jsonl")
               .read_text().splitlines()]
    assert [x["step"] for x in records if "loss" in x] == [1, 2, 4]
    assert [(x["step"], x["reason"]) for x in records if x.get("event") == "skipped"] == \
        [(3, "bad batch")]
    assert (rank / "latest").read_text().strip() == f"{PREFIX}-1_4"
    for part in ("", "train_state/"):
        two = ms.load_checkpoint(str(rank / f"{part}{PREFIX}-1_2.ckpt"))
        three = ms.load_checkpoint(str(rank / f"{part}{PREFIX}-1_3.ckpt"))
        kept = [k for k in two if k not in ("epoch_num", "step_num")]
        assert kept and all(np.array_equal(two[k].asnumpy(), three[k].asnumpy()) for k in kept)
    four = ms.load_checkpoint(str(rank / f"{PREFIX}-1_4.ckpt"))
    assert all(np.isfinite(v.asnumpy()).all() for v in four.values())


def test_bad_batches_in_a_row_stop_the_run_as_bad_data(tmp_path):
    """Steps 2-4 all bad, the parameters fine: three skipped batches in a row are the data, not a
    sample; exit 2 naming the data key and the last batch's samples; `latest` stays where it is."""
    r, rank = _poisoned_run(tmp_path, range(8, 32), "runner_config.stop_step=4")
    text = r.stdout + r.stderr
    assert r.returncode == 2, text
    assert "Traceback" not in text
    assert "key 'train_dataset.data_loader.dataset_dir'" in r.stderr
    assert "3 bad batches in a row (the last: samples " + ", ".join(map(str, range(24, 32))) \
        + " of epoch 1)" in r.stderr and "Fix:" in r.stderr
    assert "the newest checkpoint (step 3) is intact and stays `latest`" in r.stderr
    assert (rank / "latest").read_text().strip() == f"{PREFIX}-1_3"


def _prepare(out, *extra):
    return run_cli("data", "prepare", "alpaca", "-i", DEMO / "alpaca_demo.json", "-o", out,
                   "-t", DEMO / "tokenizer.model", *extra)


def test_data_prepare_on_a_full_disk_writes_nothing_and_keeps_the_old_output(tiny_tmpfs):
    # MindRecord (a 16 MiB header alone does not fit 1 MiB): was a FileWriter traceback, exit 1.
    r = _prepare(tiny_tmpfs / "alpaca.mindrecord", "--seq-length", "256")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert f"{tiny_tmpfs / 'alpaca.mindrecord'}: key '--output'" in r.stderr
    assert "no space left" in r.stderr.lower() and "Fix: free disk space" in r.stderr
    assert list(tiny_tmpfs.iterdir()) == []                 # no data file, index or temp folder

    # JSONL over an earlier output, the disk filled meanwhile: the old file stays as it was.
    old = tiny_tmpfs / "alpaca.jsonl"
    r = _prepare(old, "--seq-length", "256")
    assert r.returncode == 0, r.stdout + r.stderr
    before = _digests(tiny_tmpfs)
    free = subprocess.run(["df", "-k", "--output=avail", str(tiny_tmpfs)], capture_output=True,
                          text=True).stdout.split()[-1]
    (tiny_tmpfs / "filler").write_bytes(b"\0" * max(0, (int(free) - 8) * 1024))
    before["filler"] = hashlib.sha256((tiny_tmpfs / "filler").read_bytes()).hexdigest()
    r = _prepare(old, "--seq-length", "128", "--overwrite")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr and "Fix:" in r.stderr
    assert f"{old}: key '--output'" in r.stderr and "No space left on device" in r.stderr
    assert _digests(tiny_tmpfs) == before                   # nothing lost, nothing half-written


def test_a_second_ctrl_c_during_compile_aborts_quietly(tmp_path):
    """The first SIGINT asks for a save at the next step; a second one, here sent while the
    first step's graph compiles, aborts at once: exit 130, one line, no MindSpore analyzer dump,
    no analyze_fail.ir anywhere (it was written into the working folder)."""
    import os
    import signal
    import sys
    import time

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "petrun", "finetune", "--config", str(CONFIG), "--output_dir",
         str(tmp_path / "out"), "--load_checkpoint", str(DEMO / "llama2_tiny_base.ckpt"),
         "--train_dataset_dir", str(DEMO / "alpaca_demo_seq256.jsonl"), "runner_config.stop_step=3"],
        cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 180
    for line in proc.stdout:               # the base weights are loaded right before the compile
        lines.append(line)
        if line.startswith("loaded ") or time.monotonic() > deadline:
            break
    time.sleep(1.0)                        # the training loop's handlers are installed by now
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    text = "".join(lines) + rest
    assert proc.returncode == 130, text
    assert "SIGINT again: aborted without saving" in text
    assert "ANALYZER" not in text and "Traceback" not in text and "analyze_fail" not in text, text
    assert not list(tmp_path.rglob("analyze_fail.ir")) and not list(cwd.iterdir())
