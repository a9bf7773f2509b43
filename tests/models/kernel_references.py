"""Reference implementations of the fused Ascend primitives petrun/models/kernels.py calls, written
from their documented semantics in composite MindSpore ops so they run on CPU inside the models
(graph and PyNative). They stand in for the primitives through kernels.stand_ins; they test what
the models feed the primitives (layouts, masks, scale, band, prefix), not the Ascend kernels.

Documented semantics used (MindSpore 2.10 ops.FlashAttentionScore / ops.rms_norm docstrings):
- FlashAttentionScore(head_num, keep_prob, scale_value, pre_tokens, next_tokens, inner_precise,
  input_layout, sparse_mode)(query, key, value, real_shift, drop_mask, padding_mask, attn_mask,
  prefix) -> (softmax_max, softmax_sum, softmax_out, attention_out);
  attention_out = softmax(mask(scale_value · q·kᵀ)) · v. Layouts BNSD (B, N, S, D) and BSH
  (B, S, N·D); N2 key heads divide N1 = head_num query heads. attn_mask uint8/bool,
  (B, 1, S1, S2) or (S1, S2): 0 keeps, 1 discards. sparse_mode 0: only the band between
  pre_tokens and next_tokens is computed: query i keeps key j iff i - pre_tokens <= j <=
  i + next_tokens, counted from the top-left corner. sparse_mode 2 (leftUpCausal): pre_tokens
  and next_tokens take no effect, query i keeps key j iff j <= i (the lower triangle from the
  top-left vertex), and attn_mask must be the optimized (2048, 2048) matrix.
- RmsNorm(epsilon)(x, gamma) -> (x / sqrt(mean(x²) + epsilon) · gamma, rstd), same dtype as x.

Not modelled, and refused: dropout (keep_prob < 1), sparse modes but 0 and 2, real_shift, prefix.
Rows whose every key is discarded have no documented result; they occur only at padding queries,
whose outputs nothing reads, and this reference gives them what petrun's composite gives
(a uniform distribution), so whole outputs can be compared.
"""
from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import nn, ops

LOWEST = float(np.finfo(np.float32).min)


class RefFlashAttentionScore(nn.Cell):
    calls: list = []   # every construction's keyword arguments, newest last

    def __init__(self, head_num, keep_prob=1.0, scale_value=1.0, pre_tokens=2147483647,
                 next_tokens=2147483647, inner_precise=0, input_layout="BSH", sparse_mode=0):
        super().__init__()
        RefFlashAttentionScore.calls.append(dict(
            head_num=head_num, keep_prob=keep_prob, scale_value=scale_value,
            pre_tokens=pre_tokens, next_tokens=next_tokens, inner_precise=inner_precise,
            input_layout=input_layout, sparse_mode=sparse_mode))
        if sparse_mode not in (0, 2) or input_layout not in ("BNSD", "BSH"):
            raise NotImplementedError(f"sparse_mode {sparse_mode}, layout {input_layout}")
        self.keep_prob = keep_prob
        self.head_num = int(head_num)
        self.scale_value = float(scale_value)
        self.pre_tokens = int(pre_tokens)
        self.next_tokens = int(next_tokens)
        self.input_layout = input_layout
        self.sparse_mode = sparse_mode

    def _bnsd(self, x, heads):
        if self.input_layout == "BNSD":
            return x
        batch, seq, width = x.shape
        return ops.transpose(ops.reshape(x, (batch, seq, heads, width // heads)), (0, 2, 1, 3))

    def construct(self, query, key, value, real_shift=None, drop_mask=None, padding_mask=None,
                  attn_mask=None, prefix=None):
        if real_shift is not None or drop_mask is not None or prefix is not None:
            raise NotImplementedError("real_shift / dropout / prefix are not modelled")
        q = self._bnsd(ops.cast(query, ms.float32), self.head_num)
        dim = q.shape[-1]
        kv_heads = key.shape[1] if self.input_layout == "BNSD" else key.shape[-1] // dim
        k = self._bnsd(ops.cast(key, ms.float32), kv_heads)
        v = self._bnsd(ops.cast(value, ms.float32), kv_heads)
        batch, heads, s1, _ = q.shape
        s2 = k.shape[2]
        group = heads // kv_heads
        # query head h reads key head h // group
        k = ops.reshape(ops.tile(ops.reshape(k, (batch, kv_heads, 1, s2 * dim)), (1, 1, group, 1)),
                        (batch, heads, s2, dim))
        v = ops.reshape(ops.tile(ops.reshape(v, (batch, kv_heads, 1, s2 * dim)), (1, 1, group, 1)),
                        (batch, heads, s2, dim))
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * self.scale_value
        i = ops.reshape(ops.arange(s1, dtype=ms.int32), (s1, 1))
        j = ops.reshape(ops.arange(s2, dtype=ms.int32), (1, s2))
        if self.sparse_mode == 2:
            if attn_mask is None or tuple(attn_mask.shape) != (2048, 2048):
                raise ValueError("sparse_mode 2 needs the optimized (2048, 2048) attn_mask")
            discard = ops.reshape(j > i, (1, 1, s1, s2))
        else:
            outside = ops.logical_or(j < i - min(self.pre_tokens, s1 + s2),
                                     j > i + min(self.next_tokens, s1 + s2))
            discard = ops.reshape(outside, (1, 1, s1, s2))
        if attn_mask is not None and self.sparse_mode == 0:
            given = ops.cast(attn_mask, ms.bool_)
            if given.ndim == 2:
                given = ops.reshape(given, (1, 1, s1, s2))
            discard = ops.logical_or(discard, given)
        discard = ops.broadcast_to(discard, scores.shape)
        scores = ops.select(discard, ops.full_like(scores, LOWEST), scores)
        out = ops.matmul(ops.softmax(scores, -1), v)
        if self.input_layout == "BSH":
            out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (batch, s1, heads * dim))
        out = ops.cast(out, query.dtype)
        return out, out, out, out


class RefRmsNorm(nn.Cell):
    calls: list = []

    def __init__(self, epsilon=1e-6):
        super().__init__()
        RefRmsNorm.calls.append(dict(epsilon=epsilon))
        self.epsilon = float(epsilon)

    def construct(self, x, gamma):
        rstd = ops.rsqrt(ops.mean(ops.square(x), -1, keep_dims=True) + self.epsilon)
        return x * rstd * gamma, rstd


STAND_INS = dict(FlashAttentionScore=RefFlashAttentionScore, RmsNorm=RefRmsNorm)


def np_attention(q, k, v, keep, scale):
    """numpy oracle: q (B, N, S1, D), k/v (B, Nkv, S2, D), keep (B|1, 1, S1, S2) bool."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    s = np.einsum("bnid,bnjd->bnij", q, k) * scale
    s = np.where(keep, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bnij,bnjd->bnid", p / p.sum(-1, keepdims=True), v)
