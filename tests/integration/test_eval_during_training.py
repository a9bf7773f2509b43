"""do_eval: the recipe evaluates eval_dataset every eval_step_interval steps (issue 9), and the
number it records is the one `petrun eval` gives for the checkpoint saved at that step."""
import json

import pytest

from tests.conftest import ROOT, run_cli

CONFIG = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"
RUN = ["runner_config.stop_step=4", "callbacks.1.save_checkpoint_steps=2", "runner_config.epochs=1"]


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    rows = (ROOT / "data/demo/alpaca_demo_seq256.jsonl").read_text(encoding="utf-8").splitlines()
    path = tmp_path_factory.mktemp("eval") / "eval.jsonl"
    path.write_text("\n".join(rows[-12:]) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow   # long single-process CLI run (CI runs it)
def test_eval_every_n_steps_matches_petrun_eval_on_the_saved_adapter(tmp_path, eval_data):
    out = tmp_path / "out"
    r = run_cli("finetune", "--config", CONFIG, "--output_dir", out, "--do_eval", "True",
                "--eval_dataset_dir", eval_data, "eval_step_interval=2", *RUN)
    assert r.returncode == 0, r.stdout + r.stderr
    records = [json.loads(x) for x in (out / "log/rank_0/metrics.jsonl").read_text().splitlines()]
    evals = [x for x in records if x.get("event") == "eval"]
    assert [e["step"] for e in evals] == [2, 4]
    assert all(e["eval_tokens"] > 100 and 0 < e["eval_loss"] < 10 for e in evals)
    assert evals[0]["eval_loss"] != evals[1]["eval_loss"], "the adapter trained between evals"
    assert "step 4: eval loss" in r.stdout
    # the training loss records are untouched by evaluation (no eval step counted as training)
    assert [x["step"] for x in records if "loss" in x] == [1, 2, 3, 4]

    adapter = next((out / "checkpoint/rank_0").glob("*-1_4.ckpt"))
    e = run_cli("eval", "--config", CONFIG, "--adapter", adapter, "--eval_dataset_dir", eval_data,
                "--output", "json")
    assert e.returncode == 0, e.stdout + e.stderr
    standalone = json.loads(e.stdout[e.stdout.index("{"):])
    assert standalone["tokens"] == evals[1]["eval_tokens"]
    assert abs(standalone["loss"] - evals[1]["eval_loss"]) <= 1e-5


def test_do_eval_without_an_interval_or_data_is_refused(tmp_path, eval_data):
    r = run_cli("finetune", "--config", CONFIG, "--output_dir", tmp_path / "a", "--do_eval", "True",
                "--eval_dataset_dir", eval_data, "eval_step_interval=-1", "eval_epoch_interval=-1", *RUN)
    assert r.returncode == 2 and "eval_step_interval" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("finetune", "--config", CONFIG, "--output_dir", tmp_path / "b", "--do_eval", "True",
                "--eval_dataset_dir", tmp_path / "missing.jsonl", *RUN)
    assert r.returncode == 2 and "missing.jsonl" in r.stderr and "--do_eval False" in r.stderr
