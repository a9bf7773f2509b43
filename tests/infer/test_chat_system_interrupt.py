"""`petrun chat --system` and Ctrl-C, through the real CLI on the bundled tiny Llama2 (its base
weights; LoRA's B starts at zero, so no adapter is needed to chat).

Oracles: the vicuna prompt written out by hand and encoded with the sentencepiece library; for
Ctrl-C, that the message after an interrupted answer is prefilled as the first turn of a fresh
conversation (the interrupted exchange left nothing in the KV cache)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, run_cli
from tests.infer.terminal import Terminal

pytestmark = pytest.mark.slow

CONFIG = "configs/llama2/lora_llama2_tiny.yaml"
TOKENIZER = ROOT / "data" / "demo" / "tokenizer.model"
HEAD = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions. ")
Q1, Q2 = "Give three tips for staying healthy.", "What is 12 plus 30?"
ARGS = ("chat", "--config", CONFIG, "--chat-template", "vicuna", "--greedy")


def _ids(text: str) -> list[int]:
    import sentencepiece as spm
    return [1] + spm.SentencePieceProcessor(model_file=str(TOKENIZER)).encode(text)


def test_system_prompt_opens_every_conversation():
    r = run_cli(*ARGS, "--max-new-tokens", "2", "--output", "json", "--system", "You are terse.",
                input=f"{Q2}\n/reset\n{Q2}\n")
    assert r.returncode == 0, r.stdout + r.stderr
    turns = [json.loads(line) for line in r.stdout.splitlines()]
    first, _, again = turns
    assert first["new_ids"] == _ids(f"You are terse. USER: {Q2} ASSISTANT:")
    assert again["new_ids"] == first["new_ids"]             # kept across /reset


def test_system_on_a_template_without_one_exits_2_before_building():
    r = run_cli(*ARGS[:3], "--chat-template", "glm2", "--system", "Be brief.", input="hi\n")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "key '--system': the glm2 chat template has no system turn" in r.stderr
    assert "Traceback" not in r.stderr and "loaded" not in r.stdout + r.stderr


def _read_until(stream, needle: str, seen: list, timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return
    raise AssertionError(f"{needle!r} never came: {''.join(seen)}")


def test_ctrl_c_while_streaming_drops_the_answer_and_ctrl_c_at_the_prompt_exits_0():
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PETRUN_TEST_PAUSE_AT": "chat_answer:120"}
    proc = subprocess.Popen([sys.executable, "-m", "petrun", *ARGS, "--max-new-tokens", "24",
                             "--output", "json"], cwd=ROOT, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err: list = []
    out: list = []
    try:
        proc.stdin.write(Q1 + "\n")
        proc.stdin.flush()
        _read_until(proc.stderr, "pausing at chat_answer", err)   # one decode step has run
        proc.send_signal(signal.SIGINT)
        _read_until(proc.stdout, '"interrupted"', out)
        proc.stdin.write(f"{Q2}\n/reset\n{Q2}\n")
        proc.stdin.flush()
        for _ in range(2):
            _read_until(proc.stdout, '"turn"', out)
        time.sleep(1)                                 # back at the prompt, reading stdin
        proc.send_signal(signal.SIGINT)
        rest, tail = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(err) + tail
    assert "Traceback" not in tail and "KeyboardInterrupt" not in tail, tail
    events = [json.loads(line) for line in out + rest.splitlines()]
    assert events[0] == {"event": "interrupted"}
    # The interrupted exchange is gone: Q2 is prefilled as a new conversation's first message.
    assert events[1]["turn"] == 1 and events[1]["new_ids"] == _ids(HEAD + f"USER: {Q2} ASSISTANT:")
    assert events[1]["context_tokens"] == len(events[1]["new_ids"]) + len(events[1]["ids"])
    # ... and answered as in a fresh conversation (after /reset): the cache kept nothing of it
    assert events[2] == {"event": "reset"} and events[3]["ids"] == events[1]["ids"]


def test_ctrl_c_on_a_terminal_stops_the_answer_and_then_ends_the_chat():
    """stdin a pseudo-terminal: ^C (the terminal sends SIGINT) mid-answer brings the prompt back;
    ^C at the prompt ends the chat with exit code 0."""
    term = Terminal(*ARGS, "--max-new-tokens", "24",
                    env={"PETRUN_TEST_PAUSE_AT": "chat_answer:120"})
    term.wait_for(b">>> ")
    term.send(f"{Q1}\r".encode())
    term.wait_for(b"pausing at chat_answer")
    term.send(b"\x03")                            # Ctrl-C while the answer streams
    term.wait_for(b"answer stopped")
    term.wait_for(b">>> ", 2)
    term.send(b"\x03")                            # Ctrl-C at the prompt
    assert term.exit_code() == 0, term.text()
    assert b"Traceback" not in term.seen
