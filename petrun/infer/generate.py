"""Text generation: one prefill pass over the prompts, then one token per step.

With the KV cache (`use_cache=True`, MindFormers' use_past) each step feeds only the newest token
and the model adds its keys/values to the per-layer caches it returned the step before. The
no-cache path feeds the whole sequence every step; all paths produce the same tokens (tested),
the cache just runs the network on one token per step instead of on the whole sequence.

The prefill runs in PyNative mode (its shape changes with every prompt length; graph mode would
compile per shape, reference/feasibility.md §1). The cached steps then run one of two ways:
  jit=True   a fixed-size cache (prefix + prompt + new tokens slots, hidden until written) held
             in Parameters of one compiled graph (ms.jit) for every step, which writes each new
             key/value into its slot in place: ~2 s to compile once per batch/length, then
             each step costs a fraction of PyNative's per-op dispatch;
  jit=False  a cache that grows by concatenation, every step in PyNative.
A KVCache (the fixed-size one) can also outlive a call: `petrun chat` keeps one per conversation
and each turn prefills only its new tokens on top of it (KVCache.extend), so earlier turns are
never run again and the step graph, compiled for the cache's fixed size, is compiled once.

Batching: prompts are left-padded to a common length, so every row's newest token sits in the
last column. Pad keys are hidden by the attention mask, and positions are counted per row from
its first real token (HF computes position_ids from the attention mask the same way), so a padded
row generates exactly what it would alone.

Prefixes (P-Tuning v2, prefix tuning): per-layer key/values (2, B, n_kv_heads, P, head_dim) are
the cache's first P slots before the prompt is fed; the valid length and the mask include them
(reference/mindformers.md §5.6) and token positions still start at 0, as in training.

MindSpore is imported inside functions only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from petrun.errors import UserError
from petrun.infer.kv_cache import (KVCache, attention_mask, decode_logits,  # noqa: F401
                                   model_prefix, prefix_cache, pynative)
from petrun.infer.sampling import SamplingConfig, next_tokens


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    use_cache: bool = True
    jit: bool = True             # compiled fixed-size-cache steps (with use_cache)
    seed: int = 0


@dataclass
class GenerationResult:
    prompts: list[list[int]]
    tokens: list[list[int]]          # generated ids per prompt, up to and including eos
    finish_reasons: list[str]        # "eos" or "length"
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0      # every step after the prefill
    steps: int = 0                   # forward passes after the prefill
    use_cache: bool = True
    jit: bool = False

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens (all rows) per second, prefill included."""
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Batch layout


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 ids (B, T) with each prompt right-aligned, and the bool mask of real tokens."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token", key="prompt",
                        fix="give a non-empty --prompt / --prompt-ids")
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int32)
    valid = np.zeros((len(prompts), width), dtype=bool)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = np.asarray(p, dtype=np.int32)
        valid[b, width - len(p):] = True
    return ids, valid


def positions_of(valid: np.ndarray) -> np.ndarray:
    """Per-row positions: real tokens count 0, 1, 2, ... from the row's first real token;
    pads get 0 (their outputs are never used)."""
    return np.where(valid, np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)


def position_capacity(model) -> int:
    """How many positions the model can encode (rotary table / learned position rows)."""
    config = model.config
    cap = getattr(config, "max_positions", None)
    return int(cap if cap else config.seq_length)


# ---------------------------------------------------------------------------------------------
# After the prefill: how each new token is fed back. `key_valid` (B, keys) marks the cache slots
# a query may see (the prefix, real prompt tokens, fed-back tokens).


class _GrowingCache:
    """PyNative; the caches grow by one slot per step."""

    def __init__(self, past, key_valid):
        self.past, self.key_valid = past, key_valid

    def __call__(self, model, tokens, positions):
        self.key_valid = np.concatenate([self.key_valid, np.ones((len(tokens), 1), bool)], 1)
        mask = attention_mask(self.key_valid, self.key_valid.shape[1] - 1, 1)
        logits, self.past = decode_logits(model, tokens, positions, mask, self.past)
        return logits


class _NoCache:
    """PyNative; the whole sequence (after the prefix) is run again every step."""

    def __init__(self, ids, positions, key_valid, prefix_past):
        self.ids, self.positions, self.key_valid = ids, positions, key_valid
        self.prefix_past = prefix_past
        self.prefix_len = key_valid.shape[1] - ids.shape[1]

    def __call__(self, model, tokens, positions):
        self.ids = np.concatenate([self.ids, tokens], 1)
        self.positions = np.concatenate([self.positions, positions], 1)
        self.key_valid = np.concatenate([self.key_valid, np.ones((len(tokens), 1), bool)], 1)
        mask = attention_mask(self.key_valid, self.prefix_len, self.ids.shape[1])
        logits, _ = decode_logits(model, self.ids, self.positions, mask, self.prefix_past)
        return logits


# ---------------------------------------------------------------------------------------------
# The loop

TokenCallback = Callable[[int, np.ndarray, np.ndarray], None]


def generate(model, prompts: Sequence[Sequence[int]], config: GenerationConfig = GenerationConfig(),
             *, prefix_key_values=None, on_token: TokenCallback | None = None,
             cache: KVCache | None = None, history: Sequence[Sequence[int]] | None = None,
             rng: np.random.Generator | None = None) -> GenerationResult:
    """Generate up to config.max_new_tokens tokens after each prompt (lists of token ids).

    prefix_key_values: per-layer prefix (see module doc); None asks the model (model_prefix).
    on_token(step, tokens, active): called after each step with the (B,) chosen ids and which
      rows were still generating (finished rows are fed pad tokens that belong to no output).
    cache: a KVCache to continue (a chat): the prompts are the new tokens only, one row per
      cache row, all of one length; they are prefilled on top of what the cache holds and the
      steps write after them. On return the cache holds the prompts and every generated token
      but the last (never fed), which the next call's prompt should begin with.
    history: the tokens each row's cache already holds, for the repetition penalty.
    rng: the sampling generator (default: a fresh one seeded with config.seed).
    A row stops at its first eos token (kept in its output) or after max_new_tokens.
    """
    if not hasattr(model, "decode"):
        raise TypeError(f"{type(model).__name__} has no decode() method for incremental inference")
    prompts = [[int(t) for t in p] for p in prompts]
    for key, problem in config.sampling.check():
        raise UserError(problem, key=key)
    if config.max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, got {config.max_new_tokens}",
                        key="max_new_tokens")
    capacity = position_capacity(model)
    longest = max((len(p) for p in prompts), default=0)
    if cache is not None:
        if len(prompts) != cache.batch or len({len(p) for p in prompts}) != 1 or not longest:
            raise ValueError(f"a cache of {cache.batch} rows continues with {cache.batch} "
                             "non-empty prompts of one length")
        if longest + config.max_new_tokens - 1 > cache.room:
            raise UserError(f"{longest} new tokens plus {config.max_new_tokens} to generate do "
                            f"not fit in the {cache.room} free places of the context",
                            key="model.model_config.seq_length",
                            fix="start a new conversation or lower --max-new-tokens")
    elif longest + config.max_new_tokens > capacity:
        raise UserError(f"a {longest}-token prompt plus {config.max_new_tokens} new tokens needs "
                        f"{longest + config.max_new_tokens} positions; the model has {capacity}",
                        key="model.model_config.seq_length",
                        fix="shorten the prompt or lower --max-new-tokens")
    eos = set(int(t) for t in config.eos_token_ids)
    rng = rng if rng is not None else np.random.default_rng(config.seed)
    history = [list(h) + p for h, p in zip(history, prompts)] if history is not None \
        else [list(p) for p in prompts]

    was_training = bool(getattr(model, "training", False))
    model.set_train(False)
    try:
        with pynative():
            start = time.perf_counter()
            if cache is not None:
                logits, feed = cache.extend(model, np.asarray(prompts, np.int32)), cache
                next_pos, jit = cache.positions(), True
            else:
                logits, feed, next_pos, jit = _prefill(model, prompts, config, prefix_key_values)
            prefill = time.perf_counter() - start
            return _decode(model, prompts, config, logits, feed, next_pos, history, eos, rng,
                           on_token, prefill, jit)
    finally:
        model.set_train(was_training)


def _prefill(model, prompts, config, prefix_key_values):
    """The prompts' pass (left-padded) and how each new token will be fed back."""
    ids, valid = left_pad(prompts, config.pad_token_id)
    batch, width = ids.shape
    if prefix_key_values is None:
        prefix_key_values = model_prefix(model, batch)
    prefix_past, prefix_len = prefix_cache(prefix_key_values, batch)
    key_valid = np.concatenate([np.ones((batch, prefix_len), bool), valid], axis=1)
    positions = positions_of(valid)
    logits, past = decode_logits(model, ids, positions,
                                 attention_mask(key_valid, prefix_len, width), prefix_past)
    jit = config.use_cache and config.jit and config.max_new_tokens > 1
    # Slots for the prefix, the prompt and every token fed back (the last one never is).
    feed = (KVCache(model, key_valid.shape[1] + config.max_new_tokens - 1, key_valid, past,
                    prefix_len) if jit else
            _GrowingCache(past, key_valid) if config.use_cache else
            _NoCache(ids, positions, key_valid, prefix_past))
    return logits, feed, (positions[:, -1] + 1).astype(np.int32), jit


def _decode(model, prompts, config, logits, feed, next_pos, history, eos, rng, on_token,
            prefill, jit):
    batch = len(prompts)
    out = [[] for _ in prompts]
    reasons = ["length"] * batch
    done = np.zeros(batch, dtype=bool)
    steps, start = 0, time.perf_counter()
    for step in range(config.max_new_tokens):
        active = ~done
        tokens = np.where(active, next_tokens(logits, history, config.sampling, rng),
                          config.pad_token_id).astype(np.int32)
        for b in np.flatnonzero(active):
            tok = int(tokens[b])
            out[b].append(tok)
            history[b].append(tok)
            if tok in eos:
                done[b], reasons[b] = True, "eos"
        if on_token is not None:
            on_token(step, tokens, active)
        if done.all() or step == config.max_new_tokens - 1:
            break
        logits = feed(model, tokens[:, None], next_pos[:, None])
        next_pos = next_pos + 1
        steps += 1
    decode = time.perf_counter() - start
    return GenerationResult(prompts=prompts, tokens=out, finish_reasons=reasons,
                            prefill_seconds=prefill, decode_seconds=decode, steps=steps,
                            use_cache=config.use_cache, jit=jit)
