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
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from petrun.errors import UserError
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


def attention_mask(key_valid: np.ndarray, past_len: int, seq: int) -> np.ndarray:
    """(B, 1, seq, past_len + seq) float mask, 1 = may attend: query i (slot past_len + i) sees
    the valid keys at slots <= its own (the prefix slots come first and are always valid)."""
    total = key_valid.shape[1]
    causal = np.arange(total)[None, :] <= (past_len + np.arange(seq))[:, None]
    return (causal[None, None] & key_valid[:, None, None, :]).astype(np.float32)


def position_capacity(model) -> int:
    """How many positions the model can encode (rotary table / learned position rows)."""
    config = model.config
    cap = getattr(config, "max_positions", None)
    return int(cap if cap else config.seq_length)


def model_prefix(model, batch_size: int):
    """The prefix key/values a PET method attached to `model`, or None.

    The contract for prefix methods (P-Tuning v2, prefix tuning): the model exposes a callable
    `prefix_key_values(batch_size)` returning one (2, B, n_kv_heads, P, head_dim) per layer —
    exactly what construct(input_ids, prefix_key_values=...) takes in training.
    """
    fn = getattr(model, "prefix_key_values", None)
    return fn(batch_size) if callable(fn) else None


def prefix_cache(prefix_key_values, batch: int):
    """Per-layer (keys, values) Tensors (B, Nkv, P, D) from (2, B|1, Nkv, P, D) entries, and P."""
    if prefix_key_values is None:
        return None, 0
    import mindspore as ms
    from mindspore import ops

    past, lengths = [], set()
    for entry in prefix_key_values:
        pair = []
        for part in (entry[0], entry[1]):
            t = part if isinstance(part, ms.Tensor) else ms.Tensor(np.asarray(part))
            if t.ndim != 4:
                raise ValueError(f"prefix keys/values must be (B, n_kv_heads, P, head_dim), "
                                 f"got shape {tuple(t.shape)}")
            if t.shape[0] != batch:
                if t.shape[0] != 1:
                    raise ValueError(f"prefix batch {t.shape[0]} does not match {batch} prompts")
                t = ops.broadcast_to(t, (batch,) + tuple(t.shape[1:]))
            pair.append(t)
            lengths.add(int(t.shape[2]))
        past.append(tuple(pair))
    if len(lengths) != 1:
        raise ValueError(f"prefix lengths differ between layers: {sorted(lengths)}")
    return past, lengths.pop()


@contextmanager
def pynative():
    """Run the body in PyNative mode and restore the previous mode after."""
    import mindspore as ms

    mode = ms.get_context("mode")
    if mode != ms.PYNATIVE_MODE:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        yield
    finally:
        if mode != ms.PYNATIVE_MODE:
            ms.set_context(mode=mode)


def _step(model, ids, positions, mask, past):
    """Last-position fp32 logits (B, vocab) and the extended caches."""
    from mindspore import Tensor

    logits, presents = model.decode(Tensor(ids), Tensor(positions), Tensor(mask), past,
                                    last_only=True)
    return logits.asnumpy()[:, -1, :], presents


_STEPS_ATTR = "_petrun_compiled_decode_steps"


def compiled_step(model, past, owner):
    """A cell running model.decode(..., write_at) as one ms.jit graph over a fixed-size cache
    it holds in Parameters shaped like `past` (per layer (keys, values)), for `owner` (a KVCache).

    The cache lives in the graph, not in its inputs: each step writes its key/value into one
    slot in place (layers.extend_cache) instead of passing every layer's cache in and a
    rewritten copy out. Steps are pooled per model and cache shape, so later generate() calls
    reuse a compiled graph; a step whose owner is still alive is never handed to another cache
    (a chat's cache and a generate() call beside it each get their own)."""
    import weakref

    # A graph is compiled for the cell tree it saw; PET injection (e.g. LoRA replacing wq) after
    # a first generate() must get a fresh one, so the pool is keyed by the tree.
    tree = tuple((name, type(cell).__name__) for name, cell in model.cells_and_names())
    seen, pool = model.__dict__.get(_STEPS_ATTR, (None, {}))
    if seen != tree:
        pool = {}
        # A plain attribute, not a registered sub-cell: the model's cell tree (and so its
        # parameter walk and checkpoints) must not contain a cell that contains the model.
        object.__setattr__(model, _STEPS_ATTR, (tree, pool))
    key = tuple((tuple(t.shape), str(t.dtype)) for pair in past for t in pair)
    steps = pool.setdefault(key, [])
    step = next((s for s in steps if s.owner() is None), None)
    if step is None:
        step = _decode_step(model, past, len(steps))
        steps.append(step)
    object.__setattr__(step, "owner", weakref.ref(owner))
    step.set_train(False)
    return step


def _decode_step(model, past, index: int):
    import mindspore as ms
    from mindspore import Parameter, nn, ops

    class DecodeStep(nn.Cell):
        def __init__(self, net):
            # auto_prefix off: holding the model must not rename its parameters.
            super().__init__(auto_prefix=False)
            self.net = net
            self.layers = len(past)
            self.cache = ms.ParameterTuple([
                Parameter(ops.zeros(t.shape, t.dtype), requires_grad=False,
                          name=f"_petrun_kv_cache.{index}.{i // 2}.{'kv'[i % 2]}")
                for i, t in enumerate(t for pair in past for t in pair)])

        @ms.jit
        def construct(self, input_ids, positions, mask, write_at):
            past = ()
            for i in range(self.layers):
                past = past + ((self.cache[2 * i], self.cache[2 * i + 1]),)
            return self.net.decode(input_ids, positions, mask, past, True, write_at)[0]

    return DecodeStep(model)


def _fixed_size(past, slots: int):
    """Pad each layer's (keys, values) with zero slots along the sequence to `slots`."""
    from mindspore import ops

    out = []
    for k, v in past:
        pad = ops.zeros(k.shape[:2] + (slots - k.shape[2],) + k.shape[3:], k.dtype)
        out.append((ops.cat((k, pad), 2), ops.cat((v, ops.cast(pad, v.dtype)), 2)))
    return tuple(out)


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
        logits, self.past = _step(model, tokens, positions, mask, self.past)
        return logits


class KVCache:
    """A fixed-size cache: `slots` key/value slots per layer (zeros until written), filled from
    the front, and one compiled graph (compiled_step) for every one-token step over it.

    It outlives a generate() call: a chat keeps one for the whole conversation, and each turn
    prefills only its new tokens on top of what the cache holds (extend), then the one-token
    steps (__call__) keep writing after them. The graph is compiled for (batch, slots), which do
    not change between turns, so a session compiles once.

    key_valid (B, slots) marks the slots a query may see (prefix, real tokens, fed-back tokens);
    slots not yet written are False, so a mask built from it is causal by itself.
    """

    def __init__(self, model, slots: int, key_valid: np.ndarray, past=None, prefix_len: int = 0):
        if key_valid.shape[1] > slots:
            raise ValueError(f"{key_valid.shape[1]} filled slots do not fit in {slots}")
        self.model = model
        self.slots, self.prefix_len = int(slots), int(prefix_len)
        self.next_slot = key_valid.shape[1]
        self.key_valid = np.concatenate(
            [key_valid, np.zeros((len(key_valid), slots - self.next_slot), bool)], 1)
        self.step = None          # compiled_step, holding the cache, once there is one
        if past is not None:
            self._store(_fixed_size(past, self.slots))

    @property
    def past(self):
        """Per layer (keys, values) Parameters (B, Nkv, slots, D), or None before any token."""
        if self.step is None:
            return None
        cache = self.step.cache
        return tuple((cache[i], cache[i + 1]) for i in range(0, len(cache), 2))

    def _store(self, full) -> None:
        """Copy per-layer (keys, values) of `slots` slots into the step's Parameters."""
        from mindspore import ops

        if self.step is None:
            self.step = compiled_step(self.model, full, self)
            rows = np.indices(tuple(full[0][0].shape[:2])).transpose(1, 2, 0)
            self._write_at = np.concatenate(
                [rows, np.zeros(rows.shape[:2] + (1,), rows.dtype)], -1).astype(np.int32)
        with pynative():
            for held, new in zip((t for pair in self.past for t in pair),
                                 (t for pair in full for t in pair)):
                ops.assign(held, new)

    @classmethod
    def empty(cls, model, capacity: int, batch: int = 1, prefix_key_values=None) -> "KVCache":
        """A cache for `capacity` tokens per row (after the model's prefix, if any)."""
        with pynative():
            if prefix_key_values is None:
                prefix_key_values = model_prefix(model, batch)
            past, plen = prefix_cache(prefix_key_values, batch)
        return cls(model, plen + capacity, np.ones((batch, plen), bool), past, plen)

    def clear(self) -> None:
        """Forget every token (the prefix stays): their slots are hidden again and will be
        overwritten; nothing is reallocated and the step graph keeps its shape."""
        self.truncate(self.prefix_len)

    def truncate(self, slot: int) -> None:
        """Forget the tokens from `slot` on (never the prefix): a turn given up midway, or all."""
        slot = max(int(slot), self.prefix_len)
        self.key_valid[:, slot:] = False
        self.next_slot = min(self.next_slot, slot)

    @property
    def batch(self) -> int:
        return len(self.key_valid)

    @property
    def room(self) -> int:
        """Slots not written yet."""
        return self.slots - self.next_slot

    def positions(self) -> np.ndarray:
        """(B,) the position of each row's next token: its real tokens so far."""
        return self.key_valid[:, self.prefix_len:].sum(1).astype(np.int32)

    def extend(self, model, ids: np.ndarray) -> np.ndarray:
        """Prefill (B, S) new tokens (no padding) on top of the cache in one PyNative pass;
        returns the fp32 logits (B, vocab) of the last one. Earlier tokens are not run again."""
        ids = np.asarray(ids, np.int32)
        count = ids.shape[1]
        if count > self.room:
            raise ValueError(f"{count} new tokens do not fit in the cache's {self.room} free slots")
        positions = self.positions()[:, None] + np.arange(count, dtype=np.int32)[None, :]
        with pynative():
            if self.past is None:     # nothing cached yet, not even a prefix
                mask = attention_mask(np.ones(ids.shape, bool), 0, count)
                logits, presents = _step(model, ids, positions, mask, None)
                self._store(_fixed_size(presents, self.slots))
            else:
                # The growing-cache call: keys are the `slots` cached ones then the new ones;
                # unwritten slots are hidden by key_valid, the new ones see each other causally.
                key_valid = np.concatenate([self.key_valid, np.ones(ids.shape, bool)], 1)
                logits, presents = _step(model, ids, positions,
                                         attention_mask(key_valid, self.slots, count), self.past)
                self._store(_write_tail(presents, self.next_slot, count, self.slots))
        self.key_valid[:, self.next_slot:self.next_slot + count] = True
        self.next_slot += count
        return logits

    def __call__(self, model, tokens, positions):
        """One token per row, written at the next slot by the compiled step."""
        from mindspore import Tensor

        if self.room < 1:
            raise ValueError("the KV cache is full")
        self.key_valid[:, self.next_slot] = True
        self._write_at[..., 2] = self.next_slot
        self.next_slot += 1
        mask = self.key_valid[:, None, None, :].astype(np.float32)
        logits = self.step(Tensor(tokens), Tensor(positions), Tensor(mask),
                           Tensor(self._write_at))
        return logits.asnumpy()[:, -1, :]


def _write_tail(presents, at: int, count: int, slots: int):
    """Per layer, the `slots` cached keys/values with slots [at, at + count) replaced by the
    `count` new ones that the growing-cache call appended after them."""
    from mindspore import ops

    def put(full):
        pieces = (full[:, :, :at], full[:, :, slots:], full[:, :, at + count:slots])
        return ops.cat([p for p in pieces if p.shape[2]], 2)

    return tuple((put(k), put(v)) for k, v in presents)


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
        logits, _ = _step(model, self.ids, self.positions, mask, self.prefix_past)
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
    logits, past = _step(model, ids, positions, attention_mask(key_valid, prefix_len, width),
                         prefix_past)
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
