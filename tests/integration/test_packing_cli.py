"""train_dataset.packing / bucketing through `petrun finetune` (issue 6 item 4). The numerics
(packed loss == token-weighted mean of per-sample losses) are tests/models/test_packing_models.py;
here: the recipe feeds packed rows and trimmed buckets, reports them, resumes them exactly, and
refuses what packing cannot do."""
import json

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli

CONFIG = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"
PTUNING = ROOT / "configs" / "llama2" / "ptuning2_llama2_tiny.yaml"


def records(out):
    return [json.loads(x) for x in (out / "log/rank_0/metrics.jsonl").read_text().splitlines()]


def losses(out):
    return {r["step"]: r["loss"] for r in records(out) if "loss" in r}


@pytest.mark.slow   # long single-process CLI run (CI runs it)
def test_packed_finetune_reports_and_learns(tmp_path):
    out = tmp_path / "packed"
    r = run_cli("finetune", "--config", CONFIG, "--output_dir", out, "train_dataset.packing=True",
                "runner_config.epochs=2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "packing: 300 samples into 148 rows; useful tokens 40% → 81%" in r.stdout
    assert len(losses(out)) == 2 * (148 // 8)
    # what it learned, measured on (unpacked) training samples against the base model
    rows = (ROOT / "data/demo/alpaca_demo_seq256.jsonl").read_text().splitlines()[:48]
    data = tmp_path / "eval.jsonl"
    data.write_text("\n".join(rows) + "\n")
    adapter = next((out / "checkpoint/rank_0").glob("*.ckpt"))

    def eval_loss(*extra):
        e = run_cli("eval", "--config", CONFIG, "--eval_dataset_dir", data, "--output", "json", *extra)
        assert e.returncode == 0, e.stdout + e.stderr
        return json.loads(e.stdout[e.stdout.index("{"):])["loss"]
    assert eval_loss("--adapter", adapter) < eval_loss() - 0.1


@pytest.mark.slow   # long single-process CLI run (CI runs it)
def test_packed_run_resumes_exactly(tmp_path):
    common = ["train_dataset.packing=True", "runner_config.epochs=2", "callbacks.1.save_checkpoint_steps=4"]
    full = tmp_path / "full"
    assert run_cli("finetune", "--config", CONFIG, "--output_dir", full, "runner_config.stop_step=12",
                   *common).returncode == 0
    part = tmp_path / "part"
    assert run_cli("finetune", "--config", CONFIG, "--output_dir", part, "runner_config.stop_step=8",
                   *common).returncode == 0
    r = run_cli("finetune", "--config", CONFIG, "--output_dir", part, "runner_config.stop_step=12",
                "--resume", *common)
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = losses(full), losses(part)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-6


@pytest.mark.slow   # long single-process CLI run (CI runs it)
def test_bucketing_trims_batches_to_bucket_widths(tmp_path):
    out = tmp_path / "bucketed"
    r = run_cli("finetune", "--config", CONFIG, "--output_dir", out, "train_dataset.bucketing=True",
                "runner_config.stop_step=10")
    assert r.returncode == 0, r.stdout + r.stderr
    widths = {x["tokens"] // 8 for x in records(out) if "loss" in x}
    assert widths <= {64, 128, 192, 256} and len(widths) > 1, widths   # batch 8, multiples of 64


@pytest.mark.parametrize("config, overrides, message", [
    (PTUNING, ["train_dataset.packing=True"], "packing is not supported with pet_type ptuning2"),
])
def test_packing_refusals(tmp_path, config, overrides, message):
    r = run_cli("finetune", "--config", config, "--output_dir", tmp_path / "o", *overrides)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert "pre-flight found" in r.stderr
    # Without the pre-flight the recipe refuses it by the same rule (preflight.run_setting_errors),
    # before it creates or locks anything.
    r = run_cli("finetune", "--config", config, "--output_dir", tmp_path / "o", *overrides,
                "--skip-preflight")
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert "pre-flight found" not in r.stderr and not (tmp_path / "o").exists()
