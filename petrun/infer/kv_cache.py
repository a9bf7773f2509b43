"""The fixed-size KV cache of petrun's generation: prefix + prompt + new-token slots held in
Parameters of one compiled decoding step (ms.jit), which writes each new key/value into its slot
in place. What generate() and `petrun chat` (one cache per conversation) decode with; the helpers
both modules need (masks, prefixes, PyNative mode, one model call) live here too.

MindSpore is imported inside functions only.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np


def attention_mask(key_valid: np.ndarray, past_len: int, seq: int) -> np.ndarray:
    """(B, 1, seq, past_len + seq) float mask, 1 = may attend: query i (slot past_len + i) sees
    the valid keys at slots <= its own (the prefix slots come first and are always valid)."""
    total = key_valid.shape[1]
    causal = np.arange(total)[None, :] <= (past_len + np.arange(seq))[:, None]
    return (causal[None, None] & key_valid[:, None, None, :]).astype(np.float32)


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


def decode_logits(model, ids, positions, mask, past):
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
                logits, presents = decode_logits(model, ids, positions, mask, None)
                self._store(_fixed_size(presents, self.slots))
            else:
                # The growing-cache call: keys are the `slots` cached ones then the new ones;
                # unwritten slots are hidden by key_valid, the new ones see each other causally.
                key_valid = np.concatenate([self.key_valid, np.ones(ids.shape, bool)], 1)
                logits, presents = decode_logits(model, ids, positions,
                                                 attention_mask(key_valid, self.slots, count),
                                                 self.past)
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
