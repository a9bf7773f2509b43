"""Alpaca instruction data → vicuna_v1.1 conversation → input_ids/labels, as MindFormers does it.

The two MindFormers steps (reference/mindformers.md §7.1) in one place:

1. alpaca_converter: {instruction, input, output} → a human turn holding the Stanford Alpaca prompt
   and a gpt turn holding the output.
2. llama_preprocess --dataset_type qa: the turns are rendered with FastChat's vicuna_v1.1 template,
   "{system} USER: {prompt} ASSISTANT: {answer}</s>", tokenized round by round, padded/truncated
   to seq_length + 1, and the labels keep only the assistant answers (+ eos).

The arithmetic of the label mask is reproduced exactly, including its quirks, so a dataset made here
trains like one made by MindFormers: the prompt length is len(encode(prompt + " ASSISTANT: ")) - 1,
because SentencePiece encodes that trailing space as its own "▁" piece which, in the full round, is
merged into the first answer token; and a sample whose token count disagrees with the mask
arithmetic (e.g. it contains unk tokens, id 0 = pad) is masked entirely rather than trained wrongly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from petrun.data import conversation, formats
from petrun.data.conversation import IGNORE_TOKEN_ID, TokenizedSample  # noqa: F401
# The templates' text lives in petrun.data.templates (predict and chat render with it too);
# these names stay importable from here.
from petrun.data.templates import (PROMPT_NO_INPUT, PROMPT_WITH_INPUT, VICUNA_ROLES,  # noqa: F401
                                   VICUNA_SEP, VICUNA_SEP2, VICUNA_SYSTEM, alpaca_prompt,
                                   render, to_text)
from petrun.data.tokenizer import Tokenizer

@dataclass(frozen=True)
class BadRecord:
    index: int          # 0-based position in the input file
    reason: str


@dataclass
class PreparedData:
    samples: list[TokenizedSample] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)

    @property
    def num_truncated(self) -> int:
        return sum(s.truncated for s in self.samples)

    @property
    def num_fully_masked(self) -> int:
        return sum(s.fully_masked for s in self.samples)

    def stats(self) -> dict[str, Any]:
        lengths = [s.num_tokens for s in self.samples]
        return {
            "samples": len(self.samples),
            "bad_records": len(self.bad),
            "truncated": self.num_truncated,
            "fully_masked": self.num_fully_masked,
            "mean_tokens": float(np.mean(lengths)) if lengths else 0.0,
            "max_tokens": max(lengths, default=0),
        }


# --------------------------------------------------------------------------- alpaca → conversation

def text_fields_problem(record: Any, required: tuple[str, ...], shape: str) -> str | None:
    """Why `record` is not an object whose `required` fields are non-empty strings, or None."""
    if not isinstance(record, Mapping):
        return f"expected an object with {shape}, got {type(record).__name__}"
    for name in required:
        if name not in record:
            return f"missing field '{name}'"
        if not isinstance(record[name], str):
            return f"field '{name}' must be a string, got {type(record[name]).__name__}"
        if not record[name].strip():
            return f"field '{name}' is empty"
    return None


def check_alpaca_record(record: Any) -> str | None:
    """Why `record` cannot be used, or None when it is fine."""
    reason = text_fields_problem(record, ("instruction", "output"), "instruction/input/output")
    if reason:
        return reason
    if record.get("input") is not None and not isinstance(record["input"], str):
        return f"field 'input' must be a string, got {type(record['input']).__name__}"
    return None


def alpaca_to_conversation(record: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The alpaca_converter record: 1-based string id and a human/gpt pair."""
    return {
        "id": str(index + 1),
        "conversations": [
            {"from": "human", "value": alpaca_prompt(record)},
            {"from": "gpt", "value": record["output"]},
        ],
    }


# --------------------------------------------------------------------------- conversation → tokens

def _role_turns(turns: Sequence[Mapping[str, str]]) -> list[dict]:
    """ShareGPT human/gpt turns as template turns, a leading gpt turn dropped (FastChat)."""
    out = [{"role": formats.SHAREGPT_ROLES.get(t.get("from"), t.get("from")),
            "content": t.get("value")} for t in turns]
    if out and out[0]["role"] == "assistant":
        out = out[1:]
    return out


def vicuna_text(turns: Sequence[Mapping[str, str]]) -> str:
    """Render human/gpt turns with the vicuna_v1.1 template (petrun.data.templates)."""
    turns = _role_turns(turns)
    ends_open = bool(turns) and turns[-1]["role"] == "user"
    return to_text(render("vicuna", turns, add_generation_prompt=ends_open))


def tokenize_conversation(turns: Sequence[Mapping[str, str]], tokenizer: Tokenizer,
                          seq_length: int) -> TokenizedSample:
    """input_ids/labels of length seq_length + 1 for one human/gpt conversation (MindFormers qa
    rules, petrun.data.conversation)."""
    return conversation.tokenize("vicuna", _role_turns(turns), tokenizer, seq_length)


def tokenize_alpaca_record(record: Mapping[str, Any], tokenizer: Tokenizer,
                           seq_length: int) -> TokenizedSample:
    turns, reason = formats.alpaca_turns(record)
    if reason:
        raise ValueError(reason)
    return conversation.tokenize("alpaca", turns, tokenizer, seq_length)


def record_to_sample(rec: Any, index: int, tokenizer: Tokenizer,
                     seq_length: int) -> tuple[TokenizedSample | None, str | None]:
    """(sample, None), or (None, why the record is unusable). Conversation records
    ({"conversations": [{"from", "value"}, ...]}, the alpaca_converter output) are accepted too."""
    fmt = formats.effective_format("alpaca", rec)
    turns, reason = formats.to_turns(fmt, rec)
    if reason:
        return None, reason
    return conversation.tokenize(formats.training_template(fmt, None, "alpaca"), turns,
                                 tokenizer, seq_length), None


def prepare_alpaca(records: Iterable[Any], tokenizer: Tokenizer, seq_length: int) -> PreparedData:
    """Tokenize alpaca records; unusable ones are collected in `.bad` (with their index)."""
    if seq_length < 1:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    out = PreparedData()
    for i, rec in enumerate(records):
        sample, reason = record_to_sample(rec, i, tokenizer, seq_length)
        if reason:
            out.bad.append(BadRecord(i, reason))
        else:
            out.samples.append(sample)
    return out


# --------------------------------------------------------------------------- reading alpaca files

def load_alpaca_records(path: str | os.PathLike, *, key: str | None = None) -> list[Any]:
    """Records of an alpaca file (a JSON list, JSON lines, or any source petrun.data.records
    reads); the first unreadable line stops with its place."""
    from petrun.data.records import read_strict

    return read_strict(os.fspath(path), key=key, what="{instruction, input, output} object")
