"""Transformer building blocks shared by petrun's model families.

Written against what MindSpore 2.10 can run on CPU in both GRAPH and PyNative mode
(reference/feasibility.md §1): plain `ops.*` primitives, no `mint.*` Ext ops, RMSNorm and RoPE by
hand, every `construct` with `self` as its first argument. Parameter attribute names match
MindFormers (`weight`, `bias`, `embedding_weight`) so checkpoints load without renaming.

Tensor layout inside attention is BNSD: (batch, heads, seq, head_dim).

Semi-auto parallel: each cell that computes names its primitives by role and declares a
`shard_kind`; petrun/parallel/shard.py sets their strategies from petrun/parallel/strategy.py.
That is why element-wise steps below are primitive attributes rather than operators: only a
primitive can carry a shard strategy (stand-alone results are the same kernels, bit for bit).
"""
from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer
from mindspore.ops.auto_generate import SiLU

from petrun.errors import UserError
from petrun.models.attention_core import SoftmaxAttention
from petrun.models.broadcast import to_shape_of
from petrun.models.rope import rope_tables  # noqa: F401  (re-exported: callers import it here)


class DenseBase(nn.Cell):
    """y = x @ W (+ bias) computed in `compute_dtype`; subclasses fix how `weight` is stored.

    No activation lives here: PET wrappers replace a layer by a cell that reuses `weight`/`bias`
    and must reproduce this exact computation.
    """
    weight_in_out = False   # True: weight is [in, out] (x @ W); False: [out, in] (x @ W^T)

    def __init__(self, in_channels: int, out_channels: int, has_bias: bool = False,
                 compute_dtype=ms.float32, param_init_type=ms.float32, weight_init="normal",
                 bias_init="zeros"):
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.has_bias = bool(has_bias)
        self.compute_dtype = compute_dtype
        shape = ([self.in_channels, self.out_channels] if self.weight_in_out
                 else [self.out_channels, self.in_channels])
        self.weight = Parameter(initializer(weight_init, shape, param_init_type), name="weight")
        self.bias = (Parameter(initializer(bias_init, [self.out_channels], param_init_type),
                               name="bias") if self.has_bias else None)
        self.matmul = ops.MatMul(transpose_b=not self.weight_in_out)
        if self.has_bias:
            self.bias_add = ops.Add()

    def construct(self, x):
        out_shape = x.shape[:-1] + (self.out_channels,)
        # MatMul is 2-D only; flattening the leading axes keeps one kernel for any rank.
        x = ops.reshape(ops.cast(x, self.compute_dtype), (-1, self.in_channels))
        y = self.matmul(x, ops.cast(self.weight, self.compute_dtype))
        if self.has_bias:
            y = self.bias_add(y, ops.cast(self.bias, self.compute_dtype))
        return ops.reshape(y, out_shape)

    def extend_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"has_bias={self.has_bias}, compute_dtype={self.compute_dtype}")


class Linear(DenseBase):
    """Weight [out, in] like torch and MindFormers' default Linear (transpose_b=True); the class
    PET patterns target."""
    shard_kind = "linear"


class Dropout(nn.Dropout):
    """nn.Dropout that declares how its input is laid out: shard_kind "dropout_rows" for the
    (batch, seq, hidden) stream, "dropout_heads" for BNSD attention probabilities."""

    def __init__(self, p: float, shard_kind: str = "dropout_rows"):
        super().__init__(p=float(p))
        self.shard_kind = shard_kind


class Embedding(nn.Cell):
    """Token lookup table; `ops.Gather` because the `mint` embedding has no PyNative CPU kernel."""
    shard_kind = "embedding"

    def __init__(self, vocab_size: int, embedding_size: int, param_init_type=ms.float32,
                 embedding_init="normal"):
        super().__init__()
        self.vocab_size = int(vocab_size)
        self.embedding_size = int(embedding_size)
        self.embedding_weight = Parameter(
            initializer(embedding_init, [self.vocab_size, self.embedding_size], param_init_type),
            name="embedding_weight")
        self.gather = ops.Gather()

    def construct(self, input_ids):
        return self.gather(self.embedding_weight, input_ids, 0)


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with MindFormers' parameter names `gamma` (scale) and `beta`.

    Statistics in `compute_type` (fp32) via the ops.LayerNorm primitive, which has CPU kernels in
    both modes (the mint LayerNormExt does not); the result returns in the input's dtype.
    """
    shard_kind = "layernorm"

    def __init__(self, dim: int, eps: float = 1e-5, compute_type=ms.float32):
        super().__init__()
        self.compute_type = compute_type
        self.gamma = Parameter(initializer("ones", [int(dim)], compute_type), name="gamma")
        self.beta = Parameter(initializer("zeros", [int(dim)], compute_type), name="beta")
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=float(eps))

    def construct(self, x):
        original_dtype = x.dtype
        y, _, _ = self.norm(ops.cast(x, self.compute_type), ops.cast(self.gamma, self.compute_type),
                            ops.cast(self.beta, self.compute_type))
        return ops.cast(y, original_dtype)


class RMSNorm(nn.Cell):
    """x * rsqrt(mean(x²) + eps) * weight, with the statistics in `compute_type`.

    Hand-written because the fused RmsNorm primitive has no CPU kernel. The weight is stored in
    `compute_type` (fp32), as MindFormers does, and the result returns in the input's dtype.
    """
    shard_kind = "rmsnorm"
    full_broadcast = False   # CPU: see models/broadcast.py (kernels.broadcast_first sets it)

    def __init__(self, dim: int, eps: float = 1e-5, compute_type=ms.float32):
        super().__init__()
        self.eps = float(eps)
        self.compute_type = compute_type
        self.weight = Parameter(initializer("ones", [int(dim)], compute_type), name="weight")
        self.square = ops.Square()
        self.mean = ops.ReduceMean(keep_dims=True)
        self.add_eps = ops.Add()
        self.rsqrt = ops.Rsqrt()
        self.mul = ops.Mul()
        self.mul_weight = ops.Mul()

    def construct(self, x):
        original_dtype = x.dtype
        xf = ops.cast(x, self.compute_type)
        scale = self.rsqrt(self.add_eps(self.mean(self.square(xf), -1), self.eps))
        normed = self.mul(xf, to_shape_of(scale, xf, self.full_broadcast))
        weight = to_shape_of(ops.cast(self.weight, original_dtype), xf, self.full_broadcast)
        return self.mul_weight(ops.cast(normed, original_dtype), weight)


# ---------------------------------------------------------------------------------------------
# Rotary position embedding (HF "rotate half" layout: the two halves of head_dim form the pairs)


class ApplyRotary(nn.Cell):
    """Rotate x (..., seq, head_dim) by the tables: x·cos + rotate_half(x)·sin, where rotate_half
    maps the halves (x1, x2) to (-x2, x1); computed in the tables' dtype, returned in x's."""
    shard_kind = "rotary"
    full_broadcast = False   # CPU: see models/broadcast.py (kernels.broadcast_first sets it)

    def __init__(self):
        super().__init__()
        self.split = ops.Split(-1, 2)
        self.neg = ops.Neg()
        self.concat = ops.Concat(-1)
        self.mul_cos = ops.Mul()
        self.mul_sin = ops.Mul()
        self.add = ops.Add()

    def construct(self, x, cos, sin):
        original_dtype = x.dtype
        xr = ops.cast(x, cos.dtype)
        x1, x2 = self.split(xr)
        rotated = self.concat((self.neg(x2), x1))
        out = self.add(self.mul_cos(xr, to_shape_of(cos, xr, self.full_broadcast)),
                       self.mul_sin(rotated, to_shape_of(sin, xr, self.full_broadcast)))
        return ops.cast(out, original_dtype)


class RotaryEmbedding(nn.Cell):
    """Holds the cos/sin tables (constants, not Parameters) and slices them per sequence."""
    pipeline_place = "first"   # computed once, before the layers

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0,
                 extend_method: str = "None", scaling_factor: float = 1.0,
                 rotary_dtype=ms.float32):
        super().__init__()
        cos, sin = rope_tables(head_dim, max_positions, theta, extend_method, scaling_factor)
        self.max_positions = int(max_positions)
        self.cos = Tensor(cos, rotary_dtype)
        self.sin = Tensor(sin, rotary_dtype)

    def construct(self, seq_len):
        # Leading (1, 1) so the tables broadcast over batch and heads of BNSD tensors.
        cos = ops.reshape(self.cos[:seq_len], (1, 1, seq_len, -1))
        sin = ops.reshape(self.sin[:seq_len], (1, 1, seq_len, -1))
        return cos, sin

    def at(self, positions):
        """Tables for per-sample positions (B, S) → cos, sin (B, 1, S, D) (incremental decoding:
        left-padded rows and cached steps each start at their own offset)."""
        return rows_at(self.cos, positions), rows_at(self.sin, positions)


def rows_at(table, positions):
    """table[positions] for int positions (B, S), shaped (B, 1, S, width) to broadcast on BNSD."""
    return ops.expand_dims(ops.gather(table, positions, 0), 1)


def extend_cache(past, key, value, write_at=None):
    """This call's keys/values added to the cache.

    past: None, or (keys, values) each (B, Nkv, L, D) — earlier tokens and/or a P-Tuning v2
    prefix, which therefore stays at the front of the cache.
    write_at None: a growing cache; the result is past then key along the sequence (L + S).
    write_at (B, Nkv, 3) int32 rows [b, n, slot]: a fixed-size cache in Parameters (KVCache); the
    new key/value (S = 1) is written into `slot` in place (cheaper than a select over it).
    """
    if past is None:
        return key, value
    if write_at is not None:
        return tuple(ops.cast(ops.scatter_nd_update(p, write_at, ops.cast(
            ops.reshape(new, write_at.shape[:2] + new.shape[3:]), p.dtype)), new.dtype)
            for p, new in ((past[0], key), (past[1], value)))
    past_k, past_v = ops.cast(past[0], key.dtype), ops.cast(past[1], value.dtype)
    return ops.cat((past_k, key), 2), ops.cat((past_v, value), 2)


# ---------------------------------------------------------------------------------------------
# Attention


def next_token_inputs(input_ids, labels, position_ids=None, segment_ids=None):
    """(tokens, targets, position_ids, segment_ids) of next-token prediction: the model reads
    positions 0..S-2 and is scored on labels 1..S-1; packed rows' ids are cut like the tokens."""
    if position_ids is not None:
        position_ids = position_ids[:, :-1]
    if segment_ids is not None:
        segment_ids = segment_ids[:, :-1]
    return input_ids[:, :-1], labels[:, 1:], position_ids, segment_ids


def causal_mask(tokens, pad_token_id=None, dtype=ms.float32, segment_ids=None):
    """(batch, 1, seq, seq) mask, 1 = may attend: lower triangle, and pad keys hidden.

    Hiding pad keys follows MindFormers' Llama mask; with right padding it changes only the
    outputs at pad positions, which the loss mask drops anyway.
    segment_ids (batch, seq) int, for packed rows: the triangle becomes segment_causal_mask's
    block-diagonal one (pad keys are still hidden, so a packed sample sees what it sees alone).
    """
    batch, seq = tokens.shape
    if segment_ids is None:
        mask = ops.reshape(ops.tril(ops.ones((seq, seq), dtype)), (1, 1, seq, seq))
    else:
        mask = segment_causal_mask(segment_ids, dtype)
    if pad_token_id is not None:
        keep = ops.cast(ops.not_equal(tokens, pad_token_id), dtype)
        mask = mask * ops.reshape(keep, (batch, 1, 1, seq))
    return mask


def segment_causal_mask(segment_ids, dtype=ms.float32):
    """(batch, 1, seq, seq) mask for packed rows (train_dataset.packing), 1 = may attend: query q
    sees key k iff both carry the same segment id and k <= q, so attention stays inside each
    sample; segment 0 (padding) sees only itself. petrun.data.packing.block_causal_mask is the
    numpy statement of the same rule."""
    batch, seq = segment_ids.shape
    causal = ops.tril(ops.ones((seq, seq), dtype))
    same = ops.equal(ops.reshape(segment_ids, (batch, seq, 1)),
                     ops.reshape(segment_ids, (batch, 1, seq)))
    mask = ops.cast(same, dtype) * causal
    pad_query = ops.broadcast_to(ops.reshape(ops.equal(segment_ids, 0), (batch, seq, 1)),
                                 (batch, seq, seq))
    itself = ops.broadcast_to(ops.eye(seq, seq, dtype), (batch, seq, seq))
    return ops.reshape(ops.select(pad_query, itself, mask), (batch, 1, seq, seq))


def prepend_prompt(x, mask, prompt_embeds):
    """Put P virtual-token embeddings in front of x (B, S, H) and widen the causal mask
    (B or 1, 1, S, S) to P + S: virtual tokens are never padding and see only earlier virtual
    tokens; real tokens see every virtual token. The prompt-tuning / P-tuning hook."""
    x = ops.cat((ops.cast(prompt_embeds, x.dtype), x), 1)
    return x, widen_mask(mask, prompt_embeds.shape[1])


def widen_mask(mask, virtual: int):
    """A causal mask (B or 1, 1, S, S) for `virtual` never-padded tokens put in front."""
    seq = mask.shape[-1]
    total = virtual + seq
    # The last query row of a causal mask is exactly the per-key padding visibility.
    keep = mask[:, 0, seq - 1, :]
    keep = ops.cat((ops.ones((keep.shape[0], virtual), mask.dtype), keep), 1)
    causal = ops.reshape(ops.tril(ops.ones((total, total), mask.dtype)), (1, 1, total, total))
    return causal * ops.reshape(keep, (keep.shape[0], 1, 1, total))


def _lowest_finite(dtype) -> float:
    if dtype == ms.float16:
        return float(np.finfo(np.float16).min)
    if dtype == ms.bfloat16:
        return -3.3895313892515355e38  # bf16's own minimum; fp32's would round to -inf
    return float(np.finfo(np.float32).min)


class DotProductAttention(nn.Cell):
    """softmax(q k^T / sqrt(d) + mask) v with grouped-query attention and an optional prefix.

    construct(query, key, value, attention_mask, prefix_key_value=None):
      query (B, N, S, D); key, value (B, Nkv, S, D), RoPE already applied;
      attention_mask (B or 1, 1, S, S), 1 = may attend, 0 = masked;
      prefix_key_value: None, or (2, B, Nkv, P, D) — or any pair indexable by 0 (keys) and
      1 (values) — put in front of key/value along the sequence. Every query sees every prefix
      slot. This is the hook P-Tuning v2 and prefix tuning use; prefix keys carry no RoPE.
    attention_dropout: dropout on the attention probabilities while training (GPT2, GLM2).
    Returns (B, N, S, D) in compute_dtype.
    """
    shard_kind = "attention"

    def __init__(self, head_dim: int, num_heads: int, n_kv_heads: int | None = None,
                 compute_dtype=ms.float32, softmax_compute_type=ms.float32,
                 attention_dropout: float = 0.0):
        super().__init__()
        n_kv_heads = n_kv_heads or num_heads
        if num_heads % n_kv_heads:
            raise UserError(f"num_heads ({num_heads}) must be a multiple of n_kv_heads "
                            f"({n_kv_heads})", key="model.model_config.n_kv_heads")
        self.head_dim = int(head_dim)
        self.num_heads = int(num_heads)
        self.n_kv_heads = int(n_kv_heads)
        self.n_rep = self.num_heads // self.n_kv_heads
        self.scale_value = 1.0 / float(np.sqrt(head_dim))
        self.compute_dtype = compute_dtype
        self.softmax_compute_type = softmax_compute_type
        # Masked scores are *replaced* by the dtype's lowest finite value (not added to), so a row
        # with every key masked yields a uniform distribution instead of NaN.
        self.fill_value = _lowest_finite(softmax_compute_type)
        self.additive_mask = softmax_compute_type == ms.float32
        self.tile_kv = ops.Tile()
        self.qk = ops.BatchMatMul(transpose_b=True)
        self.scale = ops.Mul()
        self.mask_fill = ops.Select()
        self.softmax = ops.Softmax(-1)
        self.pv = ops.BatchMatMul()
        self.use_dropout = float(attention_dropout) > 0
        if self.use_dropout:
            self.dropout = Dropout(attention_dropout, "dropout_heads")
        # fp32 additive path: attention_core.py; the select path: the primitives above (sharded)
        self.fast_core = (SoftmaxAttention(self.scale_value, attention_dropout,
                                           self.dropout.dropout if self.use_dropout else None)
                          if compute_dtype == ms.float32 and self.additive_mask else None)

    def repeat_kv(self, x):
        """(B, Nkv, S, D) → (B, N, S, D); query head h reads kv head h // n_rep, as in HF."""
        if self.n_rep == 1:
            return x
        batch, n_kv, seq, dim = x.shape
        # Each kv head's (seq·dim) block repeated n_rep times in place: interleaved, not tiled.
        x = self.tile_kv(ops.reshape(x, (batch, n_kv, 1, seq * dim)), (1, 1, self.n_rep, 1))
        return ops.reshape(x, (batch, n_kv * self.n_rep, seq, dim))

    def construct(self, query, key, value, attention_mask, prefix_key_value=None):
        if prefix_key_value is not None:
            prefix_k = ops.cast(prefix_key_value[0], key.dtype)
            prefix_v = ops.cast(prefix_key_value[1], value.dtype)
            key = ops.cat((prefix_k, key), 2)
            value = ops.cat((prefix_v, value), 2)
            mask_batch, _, seq, _ = attention_mask.shape
            visible = ops.ones((mask_batch, 1, seq, prefix_k.shape[2]), attention_mask.dtype)
            attention_mask = ops.cat((visible, attention_mask), -1)
        query = ops.cast(query, self.compute_dtype)
        key = ops.cast(self.repeat_kv(key), self.compute_dtype)
        value = ops.cast(self.repeat_kv(value), self.compute_dtype)

        if self.additive_mask and self.fast_core is not None:
            # score + lowest finite value rounds to that value: the select below, in one pass
            bias = ops.cast(attention_mask <= 0.5, ms.float32) * self.fill_value
            if self.fast_core.dropping():
                return self.fast_core(query, key, value, bias)[0]
            return self.fast_core(query, key, value, bias)
        scores = ops.cast(self.scale(self.qk(query, key), self.scale_value),
                          self.softmax_compute_type)
        if self.additive_mask:   # the same bias, added (fp16/bf16 scores, fp32 softmax)
            scores = scores + ops.cast(attention_mask <= 0.5, ms.float32) * self.fill_value
        else:
            # fp16/bf16 softmax: a score plus the lowest value can overflow to -inf; replace.
            allowed = ops.broadcast_to(attention_mask > 0.5, scores.shape)
            scores = self.mask_fill(allowed, scores, ops.full_like(scores, self.fill_value))
        probs = ops.cast(self.softmax(scores), self.compute_dtype)
        if self.use_dropout:
            probs = self.dropout(probs)
        return self.pv(probs, value)


# ---------------------------------------------------------------------------------------------
# Feed-forward and loss


class SwiGLU(nn.Cell):
    """w2(silu(w1 x) * w3 x): w1 gate, w3 up, w2 down (MindFormers' Llama FeedForward names)."""
    shard_kind = "gated_mlp"

    def __init__(self, hidden_size: int, ffn_hidden_size: int, compute_dtype=ms.float32,
                 param_init_type=ms.float32, weight_init="normal", has_bias: bool = False):
        super().__init__()
        kw = dict(has_bias=has_bias, compute_dtype=compute_dtype, param_init_type=param_init_type,
                  weight_init=weight_init)
        self.w1 = Linear(hidden_size, ffn_hidden_size, **kw)
        self.w3 = Linear(hidden_size, ffn_hidden_size, **kw)
        self.w2 = Linear(ffn_hidden_size, hidden_size, **kw)
        self.act = SiLU()
        self.mul = ops.Mul()

    def construct(self, x):
        return self.w2(self.mul(self.act(self.w1(x)), self.w3(x)))


class MaskedCrossEntropy(nn.Cell):
    """Mean token cross-entropy in fp32 over positions with target != ignore_index and mask != 0.

    Written with log_softmax + gather_elements because it is the one CE formulation that runs in
    every CPU mode/dtype combination (feasibility.md §1a). An all-masked batch gives 0, not NaN.
    """
    shard_kind = "loss"
    pipeline_place = "last"

    def __init__(self, ignore_index: int = -100):
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.log_softmax = ops.LogSoftmax(-1)

    def construct(self, logits, targets, mask=None):
        vocab = logits.shape[-1]
        logits = ops.reshape(ops.cast(logits, ms.float32), (-1, vocab))
        targets = ops.reshape(targets, (-1,))
        valid = ops.not_equal(targets, self.ignore_index)
        # ignore_index is not a valid gather index; any real class works since it is masked out.
        safe_targets = ops.select(valid, targets, ops.zeros_like(targets))
        log_probs = self.log_softmax(logits)
        picked = ops.gather_elements(log_probs, 1, ops.reshape(safe_targets, (-1, 1)))
        nll = -ops.reshape(picked, (-1,))
        weight = ops.cast(valid, ms.float32)
        if mask is not None:
            weight = weight * ops.cast(ops.reshape(mask, (-1,)), ms.float32)
        return ops.reduce_sum(nll * weight) / ops.maximum(ops.reduce_sum(weight),
                                                          ops.ones((), ms.float32))


class Residual(nn.Cell):
    """x + y for the residual stream (batch, seq, hidden); a cell so its Add can be sharded."""
    shard_kind = "residual"

    def __init__(self):
        super().__init__()
        self.add = ops.Add()

    def construct(self, x, y):
        return self.add(x, y)


class TiedHead(nn.Cell):
    """Logits from a tied embedding table: (B, S, H) @ tableᵀ in compute_dtype, (B, S, vocab).

    table_name names the table Parameter, whose layout decides the head's split.
    """
    shard_kind = "tied_head"
    pipeline_place = "last"

    def __init__(self, table_name: str, compute_dtype=ms.float32):
        super().__init__()
        self.table_name = table_name
        self.compute_dtype = compute_dtype
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, hidden, table):
        batch, seq, width = hidden.shape
        flat = ops.reshape(ops.cast(hidden, self.compute_dtype), (-1, width))
        return ops.reshape(self.matmul(flat, ops.cast(table, self.compute_dtype)), (batch, seq, -1))
