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

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from petrun.data.tokenizer import Tokenizer
from petrun.errors import UserError

IGNORE_TOKEN_ID = -100

# Stanford Alpaca's prompts, as used by MindFormers' alpaca_converter.
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)

# FastChat vicuna_v1.1 (separator style "add colon two").
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_ROLES = ("USER", "ASSISTANT")
VICUNA_SEP = " "
VICUNA_SEP2 = "</s>"
_SPEAKERS = {"human": VICUNA_ROLES[0], "gpt": VICUNA_ROLES[1]}


@dataclass(frozen=True)
class BadRecord:
    index: int          # 0-based position in the input file
    reason: str


@dataclass(frozen=True)
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool      # the conversation had more than seq_length + 1 tokens
    fully_masked: bool   # every label is IGNORE_TOKEN_ID (length disagreement, see module doc)
    num_tokens: int      # tokens before padding/truncation

    def as_dict(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "labels": self.labels}


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


def alpaca_prompt(record: Mapping[str, Any]) -> str:
    """The Stanford Alpaca prompt; the with-input form whenever input is not the empty string."""
    # `input: null` is treated as absent (MindFormers would print "None" into the prompt).
    inp = record.get("input") or ""
    if inp != "":
        return PROMPT_WITH_INPUT.format(instruction=record["instruction"], input=inp)
    return PROMPT_NO_INPUT.format(instruction=record["instruction"])


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

def vicuna_text(turns: Sequence[Mapping[str, str]]) -> str:
    """Render human/gpt turns with the vicuna_v1.1 template."""
    if turns and _SPEAKERS.get(turns[0].get("from")) != VICUNA_ROLES[0]:
        turns = turns[1:]   # a leading gpt turn is dropped, as FastChat does
    text = VICUNA_SYSTEM + VICUNA_SEP
    for j, turn in enumerate(turns):
        role = _SPEAKERS.get(turn.get("from"))
        if role != VICUNA_ROLES[j % 2]:
            raise ValueError(f"turn {j} should come from "
                             f"{'human' if j % 2 == 0 else 'gpt'}, got {turn.get('from')!r}")
        msg = turn.get("value")
        if msg:
            text += f"{role}: {msg}" + (VICUNA_SEP if j % 2 == 0 else VICUNA_SEP2)
        else:
            text += f"{role}:"
    return text


def tokenize_conversation(turns: Sequence[Mapping[str, str]], tokenizer: Tokenizer,
                          seq_length: int) -> TokenizedSample:
    """input_ids/labels of length seq_length + 1 for one conversation (MindFormers qa rules)."""
    total = seq_length + 1
    rounds = vicuna_text(turns).split(VICUNA_SEP2)

    # input_ids: bos, then each round's tokens followed by eos (which stands for the "</s>"
    # the split removed).
    ids = [tokenizer.bos_id]
    for rnd in rounds:
        if rnd == "":
            break
        ids += tokenizer.encode(rnd) + [tokenizer.eos_id]
    num_tokens = len(ids)
    full = np.array(ids + [tokenizer.pad_id] * (total - len(ids)), dtype=np.int64)

    # labels: start from input_ids and blank out bos, each round's prompt, and the padding.
    labels = full.copy()
    nonpad = int(np.count_nonzero(full != tokenizer.pad_id))
    assistant_sep = VICUNA_SEP + VICUNA_ROLES[1] + ": "
    cur = 1
    labels[:cur] = IGNORE_TOKEN_ID
    for rnd in rounds:
        if rnd == "":
            break
        parts = rnd.split(assistant_sep)
        if len(parts) != 2:
            break   # the answer or prompt itself contains " ASSISTANT: "; MindFormers stops here
        prompt_len = len(tokenizer.encode(parts[0] + assistant_sep)) - 1
        labels[cur:cur + prompt_len] = IGNORE_TOKEN_ID
        cur += len(tokenizer.encode(rnd)) + 1
    labels[cur:] = IGNORE_TOKEN_ID
    fully_masked = False
    if cur < total and cur != nonpad:
        labels[:] = IGNORE_TOKEN_ID
        fully_masked = True
    return TokenizedSample(
        input_ids=full[:total].tolist(),
        labels=labels[:total].tolist(),
        truncated=num_tokens > total,
        fully_masked=fully_masked,
        num_tokens=num_tokens,
    )


def tokenize_alpaca_record(record: Mapping[str, Any], tokenizer: Tokenizer,
                           seq_length: int) -> TokenizedSample:
    return tokenize_conversation(alpaca_to_conversation(record, 0)["conversations"], tokenizer,
                                 seq_length)


def record_to_sample(rec: Any, index: int, tokenizer: Tokenizer,
                     seq_length: int) -> tuple[TokenizedSample | None, str | None]:
    """(sample, None), or (None, why the record is unusable). Conversation records
    ({"conversations": [{"from", "value"}, ...]}, the alpaca_converter output) are accepted too."""
    if isinstance(rec, Mapping) and "conversations" in rec:
        turns = rec["conversations"]
        reason = _check_turns(turns)
    else:
        reason = check_alpaca_record(rec)
        turns = None if reason else alpaca_to_conversation(rec, index)["conversations"]
    if reason:
        return None, reason
    return tokenize_conversation(turns, tokenizer, seq_length), None


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


def _check_turns(turns: Any) -> str | None:
    if not isinstance(turns, list) or not turns:
        return "'conversations' must be a non-empty list"
    for j, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or turn.get("from") not in _SPEAKERS:
            return f"conversation turn {j} needs 'from' = 'human' or 'gpt'"
        if not isinstance(turn.get("value"), str) or not turn["value"].strip():
            return f"conversation turn {j} has no text in 'value'"
    start = 1 if turns[0]["from"] != "human" else 0
    for j, turn in enumerate(turns[start:]):
        if turn["from"] != ("human", "gpt")[j % 2]:
            return "conversation turns must alternate human, gpt, human, ..."
    if len(turns) == start:
        return "conversation has no human turn"
    return None


# --------------------------------------------------------------------------- reading alpaca files

def load_alpaca_records(path: str | os.PathLike, *, key: str | None = None) -> list[Any]:
    """Records of an alpaca file: a JSON list (alpaca_data.json) or JSON lines."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError("alpaca data file not found", file=path, key=key,
                        fix="give the path of a JSON file such as alpaca_data.json")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the alpaca data: {exc}", file=path, key=key,
                        fix="save the file as UTF-8 JSON") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        # JSON lines are accepted too; anything else is reported at the first bad line.
        data = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"not valid JSON or JSON lines (line {lineno}: {exc.msg})",
                                file=path, key=key,
                                fix="the file must be a JSON list of {instruction, input, output} "
                                    "objects, or one such object per line") from None
    if isinstance(data, Mapping):
        data = [data]
    if not isinstance(data, list) or not data:
        raise UserError("no records in the alpaca data", file=path, key=key,
                        fix="the file must be a JSON list of {instruction, input, output} objects")
    return data
