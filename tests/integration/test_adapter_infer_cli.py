"""`petrun predict --adapter` and `petrun eval --adapter` through the real CLI for every family,
with a LoRA adapter trained here by `petrun finetune`: live (base + adapter folder) and merged
(`petrun ckpt merge`, then the plain model) give the same greedy tokens and the same eval loss,
and the adapter lowers the eval loss on the data it was trained on (so it was really applied)."""
import json
import math

import pytest

from tests.conftest import ROOT, run_cli
from tests.integration.test_lora_families_cli import FAMILIES, _write_base

pytestmark = pytest.mark.slow

# Token ids below every tiny config's vocabulary (512); no chat template on --prompt-ids.
PROMPT_IDS = "1,37,205,88,14,300;1,9,120,61"
NEW_TOKENS = 8
EVAL_ROWS = 16
DATA = {"llama2": "data/demo/alpaca_demo_seq256.jsonl",
        "glm2": "data/demo/alpaca_demo_glm2_seq256.jsonl",
        "gpt2": "data/demo/alpaca_demo_seq256.jsonl"}


def _ok(result) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def _json(result) -> dict:
    return json.loads(_ok(result))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_predict_and_eval_with_a_trained_adapter_live_and_merged(family, tmp_path):
    config = FAMILIES[family][0]
    _write_base(config, tmp_path / "base.ckpt")
    _ok(run_cli("finetune", "--config", config, "--output_dir", tmp_path / "out",
                "--load_checkpoint", tmp_path / "base.ckpt", "runner_config.stop_step=8",
                "lr_schedule.learning_rate=1e-2"))
    adapter = tmp_path / "out" / "checkpoint" / "rank_0"
    rows = (ROOT / DATA[family]).read_text(encoding="utf-8").splitlines()[:EVAL_ROWS]
    data = tmp_path / "eval.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")

    merged = tmp_path / "merged.ckpt"
    out = _ok(run_cli("ckpt", "merge", "--config", config, "--base", tmp_path / "base.ckpt",
                      "--adapter", adapter, "--dst", merged))
    assert merged.is_file() and "wrote" in out, out

    base_args = ("--load_checkpoint", tmp_path / "base.ckpt")
    live_args = (*base_args, "--adapter", adapter)
    plain = ("--load_checkpoint", merged, "~model.model_config.pet_config")

    def predict(*args):
        return _json(run_cli("predict", "--config", config, "--prompt-ids", PROMPT_IDS,
                             "--max-new-tokens", NEW_TOKENS, "--output", "json",
                             "model.model_config.batch_size=2", *args))

    def evaluate(*args):
        return _json(run_cli("eval", "--config", config, "--eval_dataset_dir", data, "--output",
                             "json", "runner_config.batch_size=8", *args))

    live, merged_out = predict(*live_args), predict(*plain)
    live_ids = [r["ids"] for r in live["results"]]
    assert len(live_ids) == 2 and all(0 < len(ids) <= NEW_TOKENS for ids in live_ids), live
    assert [r["ids"] for r in merged_out["results"]] == live_ids

    base_eval, live_eval, merged_eval = evaluate(*base_args), evaluate(*live_args), evaluate(*plain)
    for e in (base_eval, live_eval, merged_eval):
        assert e["samples"] == EVAL_ROWS and e["tokens"] > 100, e
        assert 0 < e["loss"] < 1.5 * math.log(512), e     # uniform over the vocabulary: 6.24
        assert abs(e["perplexity"] - math.exp(e["loss"])) <= 1e-6 * e["perplexity"]
    assert abs(merged_eval["loss"] - live_eval["loss"]) <= 1e-4 * live_eval["loss"]
    # Trained 8 steps at lr 1e-2 on these rows: the adapter must have lowered their loss.
    assert live_eval["loss"] < base_eval["loss"] - 0.05, (base_eval, live_eval)
