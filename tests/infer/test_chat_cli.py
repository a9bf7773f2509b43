"""`petrun chat` through the real CLI with piped stdin, on the bundled tiny Llama2 config with a
LoRA adapter trained here by a short `petrun finetune`.

Oracles: `petrun predict` with the KV cache off (the full forward of every token at every step)
on the whole conversation's ids for a later turn, and predict's answer to the same message for a
first turn and for the turn after /reset."""
import json

import pytest

from tests.conftest import run_cli
from tests.infer.terminal import Terminal

pytestmark = pytest.mark.slow

CONFIG = "configs/llama2/lora_llama2_tiny.yaml"
FIRST, SECOND = "What is 12 plus 30?", "Write the plural of the noun."
SCRIPT = f"{FIRST}\n{SECOND}\n\n/reset\n{SECOND}\n/exit\nNever answered.\n"
NEW = "12"


def _ok(r) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    out = tmp_path_factory.mktemp("chat") / "out"
    _ok(run_cli("finetune", "--config", CONFIG, "--output_dir", out, "runner_config.stop_step=4",
                "lr_schedule.learning_rate=1e-2"))
    path = out / "checkpoint" / "rank_0"
    assert path.is_dir()
    return str(path)


def predict(adapter, *args) -> list[dict]:
    out = _ok(run_cli("predict", "--config", CONFIG, "--adapter", adapter, "--greedy",
                      "--max-new-tokens", NEW, "--output", "json", *args))
    return json.loads(out)["results"]


@pytest.fixture(scope="module")
def chat_json(adapter):
    r = run_cli("chat", "--config", CONFIG, "--adapter", adapter, "--greedy", "--max-new-tokens",
                NEW, "--output", "json", input=SCRIPT)
    return [json.loads(line) for line in _ok(r).splitlines()]


def test_two_prompts_two_answers_reset_and_exit(chat_json):
    assert [e.get("event") for e in chat_json] == [None, None, "reset", None], chat_json
    turns = [e for e in chat_json if "turn" in e]
    assert [t["prompt"] for t in turns] == [FIRST, SECOND, SECOND]   # nothing after /exit
    assert [t["turn"] for t in turns] == [1, 2, 3]
    for t in turns:
        assert t["ids"] and len(t["ids"]) <= int(NEW) and t["capacity"] == 256
        assert t["finish_reason"] in ("eos", "length")
    # Loaded and compiled once: the first answer's steps include the step graph's compile,
    # later answers (after /reset too) reuse it.
    assert max(t["decode_seconds"] for t in turns[1:]) < 0.5 * turns[0]["decode_seconds"], turns


def test_a_later_turn_prefills_only_its_tokens_and_answers_as_the_full_forward(adapter,
                                                                              chat_json):
    first, second, _ = [e for e in chat_json if "turn" in e]
    assert first["new_ids"][0] == 1 and second["new_ids"][0] != 1    # bos starts turn 1 only
    # The conversation grew by this turn's new tokens and answer only (the previous answer's last
    # token is counted once: it is the first new token, or the eos the template ends a turn with).
    assert second["context_tokens"] == (first["context_tokens"] - 1 + len(second["new_ids"])
                                        + len(second["ids"]))
    conversation = first["new_ids"] + first["ids"][:-1] + second["new_ids"]
    assert len(conversation) == second["context_tokens"] - len(second["ids"])
    oracle = predict(adapter, "--no-cache", "--prompt-ids", ",".join(map(str, conversation)))
    assert oracle[0]["ids"] == second["ids"]


def test_first_answer_and_answer_after_reset_equal_a_fresh_predict(adapter, chat_json):
    first, second, after_reset = [e for e in chat_json if "turn" in e]
    fresh = predict(adapter, "--prompt", FIRST, "--prompt", SECOND)
    assert (first["new_ids"], first["ids"]) == (fresh[0]["prompt_ids"], fresh[0]["ids"])
    assert (after_reset["new_ids"], after_reset["ids"]) == (fresh[1]["prompt_ids"], fresh[1]["ids"])
    assert after_reset["new_ids"] != second["new_ids"]      # the history was really dropped
    assert after_reset["context_tokens"] == len(after_reset["new_ids"]) + len(after_reset["ids"])


def test_text_mode_streams_and_a_full_context_is_refused_until_reset(adapter, chat_json):
    long_message = " ".join(["tell me more about the noun"] * 60)      # > 256 tokens
    r = run_cli("chat", "--config", CONFIG, "--adapter", adapter, "--greedy", "--max-new-tokens",
                NEW, input=f"{FIRST}\n{long_message}\n/reset\n{FIRST}\n")
    out = _ok(r)
    first = chat_json[0]
    assert first["text"].strip()
    answer = f">>> {FIRST}\n{first['text'].strip()}\n({len(first['ids'])} tokens in "
    assert out.count(answer) == 2, out      # streamed, before and after /reset
    assert f"context {first['context_tokens']}/256" in out
    assert "context full:" in out and "it was not sent" in out and "/reset" in out, out
    assert "(new conversation)" in out


def test_merged_lora_chats_like_the_live_adapter(adapter, chat_json):
    r = run_cli("chat", "--config", CONFIG, "--adapter", adapter, "--merge", "--greedy",
                "--max-new-tokens", NEW, "--output", "json", input=f"{FIRST}\n{SECOND}\n")
    out = _ok(r)
    assert "merged" in r.stderr, r.stderr
    merged = [json.loads(line) for line in out.splitlines()]
    assert [(t["new_ids"], t["ids"]) for t in merged] == \
        [(t["new_ids"], t["ids"]) for t in chat_json[:2]]


def test_on_a_terminal_it_prompts_streams_and_ctrl_d_ends(adapter):
    """stdin a real terminal (a pseudo-terminal): the >>> prompt, the streamed answer with its
    context line, and Ctrl-D ending the chat with exit code 0."""
    term = Terminal("chat", "--config", CONFIG, "--adapter", adapter, "--greedy",
                    "--max-new-tokens", NEW)
    term.wait_for(b">>> ")
    term.send(f"{FIRST}\r".encode())
    term.wait_for(b"/256)")
    term.wait_for(b">>> ", 2)
    term.send(b"\x04")                            # Ctrl-D
    assert term.exit_code() == 0, term.text()
