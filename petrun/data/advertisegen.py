"""AdvertiseGen (content → summary) for ChatGLM2, as MindFormers' KeyWordGenDataset version 2 builds
its training samples (reference/mindformers.md §7.2).

    prompt_ids = [gMASK, sop] + enc("[Round 1]\\n\\n问：{content}\\n\\n答：")   ≤ max_source_length
    answer_ids = enc(summary)                                                 ≤ max_target_length
    input_ids  = prompt_ids + answer_ids + [eos], padded with pad to L = source + target + 1
    labels     = [pad] * (len(prompt_ids) - 1) + answer_ids + [eos] + [pad] * (padding + 1)

so labels are already shifted by one (GLM2's loss does not shift), and with
ignore_pad_token_for_loss every pad label (pad = unk = 0, including a real unk in the answer, as in
MindFormers) becomes -100. Truncation cuts the text, never the prefix, as the tokenizer's
max_length truncation does.
"""
from __future__ import annotations

from typing import Any, Mapping

from petrun.data.alpaca import IGNORE_TOKEN_ID, TokenizedSample, text_fields_problem
from petrun.data.tokenizer import Tokenizer

PROMPT = "[Round 1]\n\n问：{content}\n\n答："   # ChatGLM2Tokenizer.build_prompt with no history
FIELDS = ("content", "summary")


def check_record(record: Any) -> str | None:
    """Why `record` cannot be used, or None (MindFormers' ADGenDataLoader drops the same ones)."""
    return text_fields_problem(record, FIELDS, "content/summary")


def tokenize_record(record: Mapping[str, str], tokenizer: Tokenizer, max_source_length: int,
                    max_target_length: int, ignore_pad_token_for_loss: bool = True) -> TokenizedSample:
    """input_ids/labels of length max_source_length + max_target_length + 1."""
    prefix = list(tokenizer.prefix_ids)
    text_ids = tokenizer.encode(PROMPT.format(content=record["content"]))
    room = max(max_source_length - len(prefix), 0)
    prompt_ids = (prefix + text_ids[:room])[:max_source_length]
    answer_all = tokenizer.encode(record["summary"])
    answer_ids = answer_all[:max_target_length]
    total = max_source_length + max_target_length + 1
    pad, eos = tokenizer.pad_id, tokenizer.eos_id

    input_ids = prompt_ids + answer_ids + [eos]
    labels = [pad] * (len(prompt_ids) - 1) + answer_ids + [eos]
    n_pad = total - len(input_ids)
    input_ids += [pad] * n_pad
    labels += [pad] * (n_pad + 1)
    if ignore_pad_token_for_loss:
        labels = [IGNORE_TOKEN_ID if t == pad else t for t in labels]
    return TokenizedSample(
        input_ids=input_ids, labels=labels,
        truncated=len(text_ids) > room or len(answer_all) > max_target_length,
        fully_masked=all(t == IGNORE_TOKEN_ID for t in labels),
        num_tokens=len(prefix) + len(text_ids) + len(answer_all) + 1)
