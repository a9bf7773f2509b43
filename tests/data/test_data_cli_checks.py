"""`petrun data` mistakes through the real CLI: a folder given for a file, SentencePiece's advice
in petrun's terms, and counts that would otherwise be ignored. Each ends with exit 2, one message
naming the path or option, and a Fix line."""
from __future__ import annotations

import pytest

CONFIG = "configs/llama2/lora_llama2_tiny.yaml"
DEMO = "data/demo/alpaca_demo.json"


def _user_error(result, *needles):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.lstrip().startswith("error: ")
    assert "\nFix: " in result.stderr, result.stderr
    for n in needles:
        assert n in result.stderr, result.stderr


def test_prepare_input_that_is_a_directory(cli, tmp_path):
    out = tmp_path / "x.jsonl"
    r = cli("data", "prepare", "alpaca", "-i", "data/demo", "-o", out, "--config", CONFIG)
    _user_error(r, "data/demo: is a directory, not an input file", "Fix: pass the file inside it")
    assert "not found" not in r.stderr and not out.exists()


def test_train_tokenizer_input_that_is_a_directory(cli, tmp_path):
    r = cli("data", "train-tokenizer", "-i", "data/demo", "--vocab-size", "300", "-o", tmp_path)
    _user_error(r, "data/demo: key '--input': is a directory", "Fix: pass the file inside it")
    assert not (tmp_path / "tokenizer.model").exists()


def test_vocab_too_small_is_said_in_petruns_terms(cli, tmp_path):
    r = cli("data", "train-tokenizer", "-i", DEMO, "--vocab-size", "300", "-o", tmp_path)
    _user_error(r, "--vocab-size 300 is smaller than the 328 pieces this corpus needs at least",
                "Fix: raise --vocab-size: byte fallback needs 259 pieces")
    assert "character_coverage" not in r.stderr and "vocab_size" not in r.stderr
    # the figure it names is enough
    r = cli("data", "train-tokenizer", "-i", DEMO, "--vocab-size", "328", "-o", tmp_path)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("args,message", [
    (("--workers", "0"), "key '--workers': must be at least 1, got 0"),
    (("--workers", "-3"), "key '--workers': must be at least 1, got -3"),
    (("--seq-length", "0"), "key '--seq-length': must be at least 1, got 0"),
])
def test_non_positive_counts(cli, tmp_path, args, message):
    out = tmp_path / "x.jsonl"
    r = cli("data", "prepare", "alpaca", "-i", DEMO, "-o", out, "--config", CONFIG, *args)
    _user_error(r, message, args[0])
    assert not out.exists()
