"""Issue 6 acceptance: the tiny demo finetune runs from the bundled alpaca-style data through
`petrun data prepare` (what scripts/demo.sh does), and trains exactly as the bundled JSON lines."""

import pytest

from tests.conftest import ROOT, run_cli, step_records

CONFIG = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"


def _losses(out):
    return [r["loss"] for r in step_records(out)]


@pytest.mark.slow   # long single-process CLI run (CI runs it)
def test_prepare_then_finetune_matches_bundled_jsonl(tmp_path):
    data = tmp_path / "demo_data" / "alpaca_demo_seq256.mindrecord"
    r = run_cli("data", "prepare", "alpaca", "--input", ROOT / "data/demo/alpaca_demo.json",
                "--output", data, "--config", CONFIG)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "wrote 300 samples × 257 tokens" in r.stdout

    runs = {}
    for name, dataset in (("mindrecord", data), ("jsonl", ROOT / "data/demo/alpaca_demo_seq256.jsonl")):
        out = tmp_path / name
        r = run_cli("finetune", "--config", CONFIG, "--output_dir", out, "--train_dataset_dir",
                    dataset, "runner_config.stop_step=6")
        assert r.returncode == 0, r.stdout + r.stderr
        runs[name] = _losses(out)
    assert len(runs["mindrecord"]) == 6
    assert runs["mindrecord"] == runs["jsonl"]


@pytest.mark.slow   # long single-process CLI run (CI runs it)
def test_finetune_on_raw_alpaca_json_uses_a_cache(tmp_path):
    cache = tmp_path / "cache"
    env = {"PETRUN_CACHE_DIR": str(cache)}
    runs = []
    for name in ("first", "second"):
        out = tmp_path / name
        r = run_cli("finetune", "--config", CONFIG, "--output_dir", out, "--train_dataset_dir",
                    ROOT / "data/demo/alpaca_demo.json", "runner_config.stop_step=4", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        runs.append(_losses(out))
        assert len(list(cache.glob("*.npz"))) == 1   # tokenized once, reused the second time
    assert runs[0] == runs[1]
