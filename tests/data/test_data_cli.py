"""`petrun data prepare | train-tokenizer` through the real CLI: summaries, and exit 2 with a
message naming the file and a fix (no traceback) for every input mistake."""
from __future__ import annotations

import json
import os

import pytest

TOK = "data/demo/tokenizer.model"
DEMO = "data/demo/alpaca_demo.json"


def _user_error(result, *needles):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "error:" in result.stderr
    assert "Fix:" in result.stderr
    for n in needles:
        assert n in result.stderr, result.stderr


def test_prepare_alpaca_with_config_matches_bundled_jsonl(cli, tmp_path):
    out = tmp_path / "demo.jsonl"
    r = cli("data", "prepare", "alpaca", "--input", DEMO, "--output", out,
            "--config", "configs/llama2/lora_llama2_tiny.yaml")
    assert r.returncode == 0, r.stderr
    assert "wrote 300 samples × 257 tokens (input_ids, labels)" in r.stdout
    assert "truncated 0" in r.stdout and "dropped (bad records) 0" in r.stdout
    assert out.read_bytes() == open("data/demo/alpaca_demo_seq256.jsonl", "rb").read()
    # A GLM2 config: seq_length tokens, labels pre-shifted (extra_tokens 0).
    glm = tmp_path / "glm.jsonl"
    r = cli("data", "prepare", "alpaca", "-i", DEMO, "-o", glm, "-t", TOK,
            "--config", "configs/glm2/lora_glm2_tiny.yaml")
    assert r.returncode == 0, r.stderr
    assert glm.read_bytes() == open("data/demo/alpaca_demo_glm2_seq256.jsonl", "rb").read()


def test_prepare_reports_bad_records(cli, tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"instruction": "Say hi.", "output": "hi"}\n{"instruction": "x"}\nnot json\n')
    r = cli("data", "prepare", "alpaca", "-i", src, "-o", tmp_path / "a.mindrecord", "-t", TOK,
            "--seq-length", "128", "--num-shards", "2")
    assert r.returncode == 0, r.stderr
    assert "wrote 1 samples × 129 tokens" in r.stdout and "(2 files)" in r.stdout
    assert "skipped 2 bad record(s)" in r.stderr
    assert "line 2: missing field 'output'" in r.stderr and "line 3: invalid JSON" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "a.mindrecord0", "a.mindrecord0.db",
                                            "a.mindrecord1", "a.mindrecord1.db"]


@pytest.mark.parametrize("args, needles", [
    (["-i", "nope.json", "-t", TOK, "--seq-length", "64"], ["nope.json", "not found"]),
    (["-i", DEMO, "--seq-length", "64"], ["no tokenizer given", "--tokenizer"]),
    (["-i", DEMO, "-t", "data/demo/missing.model", "--seq-length", "64"], ["missing.model"]),
    (["-i", DEMO, "-t", TOK], ["--seq-length"]),
    (["-i", DEMO, "-t", TOK, "--seq-length", "64", "--output", "out.txt"], [".mindrecord", "out.txt"]),
    (["-i", DEMO, "-t", TOK, "--seq-length", "64", "--num-shards", "2"], ["--num-shards"]),
])
def test_prepare_input_errors_exit_2(cli, tmp_path, args, needles):
    if "--output" not in args:
        args = args + ["--output", str(tmp_path / "o.jsonl")]
    _user_error(cli("data", "prepare", "alpaca", *args), *needles)
    assert not os.path.exists(tmp_path / "o.jsonl")


def test_prepare_content_errors_exit_2(cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "no output"}, {"output": "no instruction"}]))
    out = tmp_path / "o.jsonl"
    _user_error(cli("data", "prepare", "alpaca", "-i", bad, "-o", out, "-t", TOK,
                    "--seq-length", "64"), "all 2 records are unusable", "line 1")
    out.write_text("keep me")
    _user_error(cli("data", "prepare", "alpaca", "-i", DEMO, "-o", out, "-t", TOK,
                    "--seq-length", "64"), "already exists", "--overwrite")
    assert out.read_text() == "keep me"
    _user_error(cli("data", "prepare", "advertisegen", "-i", bad, "-o", tmp_path / "g.jsonl",
                    "-t", TOK), "max_source_length")
    _user_error(cli("data", "prepare", "csv", "-i", bad, "-o", tmp_path / "g.jsonl", "-t", TOK,
                    "--seq-length", "64"), "unknown data format")


def test_train_tokenizer_cli(cli, tmp_path):
    r = cli("data", "train-tokenizer", "-i", DEMO, "--vocab-size", "512", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tokenizer.model").read_bytes() == open(TOK, "rb").read()
    _user_error(cli("data", "train-tokenizer", "-i", DEMO, "--vocab-size", "100", "-o",
                    tmp_path / "x.model"), "raise --vocab-size")
    _user_error(cli("data", "train-tokenizer", "-i", tmp_path / "none.txt", "--vocab-size", "300",
                    "-o", tmp_path), "none.txt")
