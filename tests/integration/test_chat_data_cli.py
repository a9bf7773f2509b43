"""Issue 19 (datasets) through the real CLI: `petrun data prepare sharegpt|messages` and a finetune
straight on a raw OpenAI-messages file."""
import json

import pytest

from tests.conftest import ROOT, run_cli, step_records

CONFIG = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"
TOKENIZER = ROOT / "data" / "demo" / "tokenizer.model"


def _chats(n):
    return [{"messages": [{"role": "system", "content": "You answer with one number."},
                          {"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": str(2 * i)},
                          {"role": "user", "content": "And times two?"},
                          {"role": "assistant", "content": str(4 * i)}]} for i in range(n)]


def test_prepare_sharegpt_with_renamed_columns(tmp_path):
    src = tmp_path / "sg.jsonl"
    rows = [{"turns": [{"who": "human", "text": "hi"}, {"who": "gpt", "text": "hello"}]},
            {"turns": [{"who": "human", "text": "x"}, {"who": "tool", "text": "y"}]}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sg_out.jsonl"
    r = run_cli("data", "prepare", "sharegpt", "-i", src, "-o", out, "-t", TOKENIZER,
                "--seq-length", "64", "--column", "conversations=turns", "--column", "from=who",
                "--column", "value=text")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "wrote 1 samples × 65 tokens" in r.stdout
    assert "chat template vicuna" in r.stdout and "--chat-template vicuna" in r.stdout
    assert "line 2: turn 1 is a 'tool' turn" in r.stderr
    assert len(out.read_text().splitlines()) == 1

    r = run_cli("data", "prepare", "chatml", "-i", src, "-o", out, "-t", TOKENIZER,
                "--seq-length", "64")
    assert r.returncode == 2 and "sharegpt, messages" in r.stdout + r.stderr


@pytest.mark.slow   # a short single-process finetune (CI runs it)
def test_finetune_straight_on_raw_messages(tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _chats(8)))
    cache = tmp_path / "cache"
    out = tmp_path / "run"
    r = run_cli("finetune", "--config", CONFIG, "--output_dir", out, "--train_dataset_dir", data,
                "runner_config.stop_step=2", env={"PETRUN_CACHE_DIR": str(cache)})
    assert r.returncode == 0, r.stdout + r.stderr
    losses = [s["loss"] for s in step_records(out)]
    assert len(losses) == 2 and all(0 < x < 20 for x in losses)
    entries = list(cache.glob("chats-messages-257-*.npz"))
    assert len(entries) == 1   # tokenized as OpenAI messages, seq_length 256 + 1
