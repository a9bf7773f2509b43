"""A conversation → input_ids and labels with the loss on the assistant's tokens only.

The text comes from petrun/data/templates.py (the templates predict and chat render with); this
module encodes it the way the template's MindFormers preprocessing does:

* "rounds" (alpaca, vicuna): MindFormers' llama_preprocess --dataset_type qa. Each round (text up
  to an eos) is encoded as one string after a bos; a round's prompt length is
  len(encode(prompt + " ")) - 1, because SentencePiece encodes the trailing space as its own "▁"
  piece which, in the whole round, is merged into the first answer token. Its quirks are kept so
  existing data trains exactly as before: a round holding the " ASSISTANT: " separator more than
  once stops the mask there, and a sample whose token count disagrees with that arithmetic (an unk
  token, id 0 = pad, in it) is masked entirely rather than trained wrongly.
* "segments" (glm2, none): each segment encoded on its own, as MindFormers' AdvertiseGen
  preprocessing encodes prompt and answer separately; the labels keep the trainable segments.

Samples are seq_length + 1 tokens, padded with pad_id (labels with IGNORE_TOKEN_ID) or cut at the
end. Families whose labels are pre-shifted (GLM2) take ids[:-1], labels[1:] afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from petrun.data.templates import (TEMPLATES, VICUNA_ROLES, VICUNA_SEP, Segment, check_template,
                                   render)

IGNORE_TOKEN_ID = -100
_ASSISTANT_SEP = VICUNA_SEP + VICUNA_ROLES[1] + ": "   # where MindFormers splits a round


@dataclass(frozen=True)
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool      # the conversation had more than seq_length + 1 tokens
    fully_masked: bool   # every label is IGNORE_TOKEN_ID
    num_tokens: int      # tokens before padding/truncation

    def as_dict(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "labels": self.labels}


def _special(seg: Segment, tokenizer) -> list[int]:
    if seg.special == "bos":
        return [tokenizer.bos_id]
    if seg.special == "prefix":
        return list(tokenizer.prefix_ids)
    return [tokenizer.eos_id]


def encode(template: str, turns: Sequence[Mapping[str, Any]], tokenizer,
           add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """(ids, trainable per id) of the whole conversation, unpadded. For "rounds" templates the
    flags follow the MindFormers arithmetic (see the module doc) without its whole-sample rules.
    With add_generation_prompt the ids end where the assistant's answer begins (chat, predict)."""
    segments = render(template, turns, add_generation_prompt)
    if TEMPLATES[check_template(template)].encoding == "segments":
        ids, flags = [], []
        for seg in segments:
            piece = _special(seg, tokenizer) if seg.special else tokenizer.encode(seg.text)
            ids += piece
            flags += [seg.trainable] * len(piece)
        return ids, flags
    ids, flags = [], []
    for prompt, answer, tail in _rounds(segments):
        if prompt is None:                       # bos / eos
            ids += _special(tail, tokenizer)
            flags.append(tail.trainable)
            continue
        whole = tokenizer.encode(prompt + answer)
        n_prompt = _prompt_len(prompt, answer, tokenizer) if answer else len(whole)
        ids += whole
        flags += [False] * n_prompt + [True] * (len(whole) - n_prompt)
    return ids, flags


def _prompt_len(prompt: str, answer: str, tokenizer) -> int:
    if answer.startswith(" "):
        return len(tokenizer.encode(prompt + " ")) - 1
    return len(tokenizer.encode(prompt))


def _rounds(segments: list[Segment]):
    """(prompt text, answer text, None) per stretch of text, (None, None, seg) per special."""
    prompt = answer = None
    for seg in segments:
        if seg.special:
            if prompt is not None:
                yield prompt, answer or "", None
                prompt = answer = None
            yield None, None, seg
        elif seg.trainable:
            answer = (answer or "") + seg.text
        else:
            if answer:   # text after an answer without an eos between: a new stretch
                yield prompt, answer, None
                prompt = answer = None
            prompt = (prompt or "") + seg.text
    if prompt is not None:
        yield prompt, answer or "", None


def tokenize(template: str, turns: Sequence[Mapping[str, Any]], tokenizer,
             seq_length: int) -> TokenizedSample:
    """input_ids/labels of length seq_length + 1 for one conversation ending in an answer.
    TemplateError (a ValueError) when the turns do not fit the template."""
    total = seq_length + 1
    if TEMPLATES[check_template(template)].encoding == "rounds":
        return _tokenize_rounds(template, turns, tokenizer, total)
    ids, flags = encode(template, turns, tokenizer)
    labels = [t if f else IGNORE_TOKEN_ID for t, f in zip(ids, flags)]
    return _finish(ids, labels, total, tokenizer.pad_id, fully_masked=False)


def _finish(ids: list[int], labels: list[int], total: int, pad_id: int,
            fully_masked: bool) -> TokenizedSample:
    n = len(ids)
    ids = (ids + [pad_id] * (total - n))[:total]
    labels = (labels + [IGNORE_TOKEN_ID] * (total - n))[:total]
    if fully_masked:
        labels = [IGNORE_TOKEN_ID] * total
    return TokenizedSample(ids, labels, truncated=n > total,
                           fully_masked=all(t == IGNORE_TOKEN_ID for t in labels), num_tokens=n)


def _tokenize_rounds(template: str, turns, tokenizer, total: int) -> TokenizedSample:
    """MindFormers' qa arithmetic, quirks included (module doc)."""
    segments = render(template, turns)
    ids: list[int] = []
    labels: list[int] = []
    cur, stopped = 0, False     # cur: the position MindFormers' mask has reached
    for prompt, answer, special in _rounds(segments):
        if prompt is None:
            tok = _special(special, tokenizer)
            ids += tok
            labels += tok if special.trainable and not stopped else [IGNORE_TOKEN_ID] * len(tok)
            cur += 0 if stopped else len(tok)
            continue
        whole = tokenizer.encode(prompt + answer)
        ids += whole
        if stopped or (prompt + answer).count(_ASSISTANT_SEP) != 1:
            stopped = True      # MindFormers splits the round at the separator and stops here
            labels += [IGNORE_TOKEN_ID] * len(whole)
            continue
        n_prompt = _prompt_len(prompt, answer, tokenizer)
        labels += [IGNORE_TOKEN_ID] * n_prompt + whole[n_prompt:]
        cur += len(whole)
    # A count disagreeing with the arithmetic (pad ids inside, or a stopped split) masks it all.
    nonpad = sum(t != tokenizer.pad_id for t in ids)
    return _finish(ids, labels, total, tokenizer.pad_id,
                   fully_masked=cur < total and cur != nonpad)
