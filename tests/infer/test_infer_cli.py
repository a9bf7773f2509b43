"""`petrun predict` and `petrun eval` through the real CLI on the bundled tiny Llama2 config
(demo tokenizer and pretrained demo base checkpoint)."""
import json
import math

import pytest

from tests.conftest import ROOT, run_cli

CONFIG = "configs/llama2/lora_llama2_tiny.yaml"
PROMPTS = ("What is 12 plus 30?", "Write the plural of the noun.")


def _json(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def cached():
    args = [a for p in PROMPTS for a in ("--prompt", p)]
    return _json(run_cli("predict", "--config", CONFIG, *args, "--max-new-tokens", "12",
                         "--output", "json", "model.model_config.batch_size=2"))


def test_predict_json_batch(cached):
    assert [r["prompt"] for r in cached["results"]] == list(PROMPTS)
    assert cached["use_cache"] and cached["template"] == "alpaca"
    for r in cached["results"]:
        assert r["prompt_ids"][0] == 1 and r["ids"]            # bos, then the template
        assert r["finish_reason"] in ("eos", "length") and len(r["ids"]) <= 12
        assert r["finish_reason"] == "length" or r["ids"][-1] == 2
    assert cached["new_tokens"] == sum(len(r["ids"]) for r in cached["results"])


def test_predict_without_cache_gives_the_same_tokens(cached):
    ids = ";".join(",".join(map(str, r["prompt_ids"])) for r in cached["results"])
    out = _json(run_cli("predict", "--config", CONFIG, "--prompt-ids", ids, "--no-cache",
                        "--max-new-tokens", "12", "--output", "json",
                        "model.model_config.batch_size=2"))
    assert not out["use_cache"]
    assert [r["ids"] for r in out["results"]] == [r["ids"] for r in cached["results"]]
    assert [r["text"] for r in out["results"]] == [r["text"] for r in cached["results"]]


def test_predict_reads_piped_prompts_one_per_line(cached):
    """`cat prompts.txt | petrun predict ...`: no prompt option and a piped stdin."""
    out = _json(run_cli("predict", "--config", CONFIG, "--max-new-tokens", "12", "--output",
                        "json", "model.model_config.batch_size=2",
                        input="\n".join(PROMPTS) + "\n\n"))
    assert [r["prompt"] for r in out["results"]] == list(PROMPTS)
    assert [r["ids"] for r in out["results"]] == [r["ids"] for r in cached["results"]]


def test_predict_streams_text(cached):
    r = run_cli("predict", "--config", CONFIG, "--prompt", PROMPTS[0], "--max-new-tokens", "12")
    assert r.returncode == 0, r.stdout + r.stderr
    want = cached["results"][0]
    assert want["text"].strip() in r.stdout
    assert f"{len(want['ids'])} new tokens in" in r.stdout and "KV cache, greedy" in r.stdout


def test_eval_reports_loss_and_perplexity(tmp_path):
    rows = (ROOT / "data/demo/alpaca_demo_seq256.jsonl").read_text(encoding="utf-8").splitlines()
    data = tmp_path / "eval.jsonl"
    data.write_text("\n".join(rows[:20]) + "\n", encoding="utf-8")
    out = _json(run_cli("eval", "--config", CONFIG, "--eval_dataset_dir", data, "--output",
                        "json", "runner_config.batch_size=8", "context.mode=1"))
    assert out["samples"] == 20 and out["batches"] == 3 and out["tokens"] > 100
    assert 0 < out["loss"] < 5
    assert abs(out["perplexity"] - math.exp(out["loss"])) < 1e-6 * out["perplexity"]
    r = run_cli("eval", "--config", CONFIG, "--output", "json")
    assert r.returncode == 2 and "--eval_dataset_dir" in r.stderr


@pytest.mark.parametrize("args,message", [
    ((), "nothing to generate from: no prompt option, and stdin held no prompt lines"),
    (("--prompt", "hi", "--prompt-ids", "1,2"), "--prompt and --prompt-ids given together"),
    (("--prompt-ids", "1,x"), "is not a list of integers"),
    (("--prompt", "hi", "--top-p", "0"), "key '--top-p': must be in (0, 1]"),
])
def test_predict_user_errors(args, message):
    r = run_cli("predict", "--config", CONFIG, *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
