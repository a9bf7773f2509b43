"""A multi-turn conversation over one KV cache: what `petrun chat` answers each line with.

The conversation is a token sequence kept in one KVCache (petrun.infer.kv_cache) for its whole
life. Each turn feeds only what is new since the last answer — the last generated token (never
fed by generate), the template's end of the assistant turn and the new user turn up to where
the assistant's answer begins — so earlier turns are never run again, and the cache's fixed
size means the decode step graph is compiled once per session (a /reset clears the cache, it
does not rebuild it).

What is new is found in the template's own segments (petrun.data.templates, which the training
data is rendered with): the conversation is rendered with a sentinel as the last answer, and the
segments after it are this turn's, encoded as petrun.data.conversation encodes training data.
The first turn is exactly predict's prompt (petrun.infer.chat.encode_prompt), so a first answer
equals predict's.

A system prompt (`system`, petrun chat --system) opens every conversation, /reset included, in
the template's system slot. An answer given up midway (KeyboardInterrupt: Ctrl-C while it
streams) leaves the conversation as it was before that message: the cache forgets the turn's
tokens, so the model never sees a half answer.

When the context (seq_length positions) cannot take a turn, the turn is refused with ContextFull
and the conversation is left as it was: the user chooses /reset. Dropping the oldest turns
instead would mean prefilling everything that remains again (RoPE positions cannot be shifted
inside a cache), a hidden cost at an unpredictable moment; petrun says so instead.

MindSpore is imported inside functions only (through generate).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from petrun.errors import UserError

_SENTINEL = "\x00petrun-answer\x00"


class ContextFull(UserError):
    """A turn that does not fit in what is left of the context; the conversation is unchanged."""


@dataclass
class ChatTurn:
    prompt: str
    new_ids: list[int]          # the tokens this turn prefilled (only what was new)
    ids: list[int]              # the answer's tokens, eos included when it ended with one
    text: str                   # the answer without eos
    finish_reason: str          # "eos", "length" (--max-new-tokens) or "context" (context full)
    context_tokens: int         # the conversation's tokens after this turn
    capacity: int               # how many it can hold (the model's positions)
    prefill_seconds: float
    decode_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------------------------
# What a new turn adds (turns: {"role": "user"|"assistant", "content": str}, as
# petrun.data.templates renders them)


def next_turn_ids(template: str, turns: Sequence[Mapping[str, Any]], user_text: str,
                  tokenizer) -> list[int]:
    """The tokens that follow the last answer's own tokens: the end of the assistant turn, the
    new user turn and the assistant's opening. `turns` ends with the assistant's answer.

    The template's segments after the answer, encoded as the training data is
    (petrun.data.conversation): specials as ids; text one segment at a time ("segments"
    templates), or each stretch between specials as one string ("rounds": MindFormers encodes a
    vicuna round, which begins after an eos, as one text)."""
    from petrun.data.templates import TEMPLATES, check_template, render

    closed = [dict(t) for t in turns]
    closed[-1] = {"role": "assistant", "content": _SENTINEL}
    segments = render(template, closed + [{"role": "user", "content": user_text}],
                      add_generation_prompt=True)
    at = next(i for i, s in enumerate(segments) if _SENTINEL in s.text)
    rest = segments[at].text.split(_SENTINEL, 1)[1]
    joined = TEMPLATES[check_template(template)].encoding == "rounds"
    pieces: list[tuple[str | None, str]] = [(None, rest)] if rest else []   # (special, text)
    for seg in segments[at + 1:]:
        if seg.special is None and joined and pieces and pieces[-1][0] is None:
            pieces[-1] = (None, pieces[-1][1] + seg.text)
        else:
            pieces.append((seg.special, seg.text))
    ids: list[int] = []
    for special, text in pieces:
        if special == "eos":
            ids.append(int(tokenizer.eos_id))
        elif special == "bos":
            ids.append(int(tokenizer.bos_id))
        elif special == "prefix":
            ids += list(tokenizer.prefix_ids)
        elif text:
            ids += tokenizer.encode(text)
    return ids


# ---------------------------------------------------------------------------------------------
# The session


class ChatSession:
    """ask() answers one user turn on top of the conversation so far; reset() forgets it.

    config: the generation settings; its max_new_tokens is the most one answer may have (an
    answer is also cut where the context ends). seed: the sampler's, restarted by reset(), so a
    first answer after /reset is the first answer of a fresh session.
    """

    def __init__(self, model, tokenizer, template: str, config, *, seed: int = 0,
                 vocab_size: int | None = None, system: str | None = None):
        from petrun.infer.generate import position_capacity
        from petrun.infer.kv_cache import KVCache

        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.system = system or None
        self.config, self.seed, self.vocab_size = config, seed, vocab_size
        self.capacity = position_capacity(model)
        self.cache = KVCache.empty(model, self.capacity)
        self.reset()

    def reset(self) -> None:
        self.cache.clear()
        self.turns: list[dict[str, str]] = []
        self.fed: list[int] = []          # the tokens in the cache (repetition penalty history)
        self.last: list[int] = []         # the last answer's tokens (its last one is not fed)
        self.rng = np.random.default_rng(self.seed)

    @property
    def used(self) -> int:
        """Tokens of the conversation, the last answer's unfed token included."""
        return len(self.fed) + (1 if self.last else 0)

    def new_ids(self, user_text: str) -> list[int]:
        """What ask(user_text) would prefill."""
        from petrun.infer.chat import encode_prompt

        if not self.turns:
            return encode_prompt(self.template, user_text, self.tokenizer, system=self.system)
        head = [{"role": "system", "content": self.system}] if self.system else []
        tail = next_turn_ids(self.template, head + self.turns, user_text, self.tokenizer)
        last = self.last[-1]
        if last in self.config.eos_token_ids:
            # The answer ended with eos: it is the template's end of turn when the template
            # has one there, otherwise it is no part of the conversation's text.
            return tail
        return [last] + tail

    def ask(self, user_text: str, on_token=None) -> ChatTurn:
        from petrun.infer.generate import generate

        new = self.new_ids(user_text)
        outside = [t for t in new if self.vocab_size is not None and t >= self.vocab_size]
        if outside:
            from petrun.data.tokenizer import VOCAB_FILE_KEY
            raise UserError(f"the tokenizer produced id {outside[0]}, outside the model's "
                            f"vocabulary of {self.vocab_size}", key=VOCAB_FILE_KEY,
                            fix="use the tokenizer the model was trained with")
        # Room for the new tokens, one answer token and that token's slot in the next turn.
        room = self.cache.room - len(new)
        if room < 1:
            raise ContextFull(
                f"the conversation holds {self.used} of the model's {self.capacity} positions "
                f"and this message needs {len(new)} more plus room for an answer; it was not "
                "sent",
                fix="type /reset to start a new conversation, or write a shorter message")
        limit = min(self.config.max_new_tokens, room)
        start, mark = time.perf_counter(), self.cache.next_slot
        try:
            result = generate(self.model, [new], replace(self.config, max_new_tokens=limit),
                              cache=self.cache, history=[self.fed], rng=self.rng,
                              on_token=on_token)
        except BaseException:   # Ctrl-C midway: the turn is dropped, the cache as before it
            self.cache.truncate(mark)
            raise
        ids = result.tokens[0]
        reason = result.finish_reasons[0]
        if reason == "length" and limit < self.config.max_new_tokens:
            reason = "context"
        text = self.tokenizer.decode(ids[:-1] if reason == "eos" else ids)
        self.fed += new + ids[:-1]
        self.last = ids
        self.turns += [{"role": "user", "content": user_text},
                       {"role": "assistant", "content": text}]
        return ChatTurn(prompt=user_text, new_ids=new, ids=ids, text=text, finish_reason=reason,
                        context_tokens=self.used, capacity=self.capacity,
                        prefill_seconds=result.prefill_seconds,
                        decode_seconds=time.perf_counter() - start - result.prefill_seconds)
