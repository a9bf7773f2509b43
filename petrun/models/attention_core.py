"""The fp32 attention core softmax(q kᵀ·scale + bias) v with a hand-written backward pass.

Why by hand: MindSpore expands Softmax's gradient into y·(dy − Σ y·dy) over the whole
(B, N, S, S') score tensor, and its CPU ReduceSum over that last axis is the slowest op of a
LoRA step (benchmarks/RESULTS.md, issue 16: ~25 ms per layer for B 2, N 8, S 512). The row sums
needed there equal Σ_d dO·O over the head dimension (FlashAttention's D = rowsum(dO ∘ O)), a
reduction over D = 64 instead of S' = 512 on a tensor S'/D times smaller; the scale is applied
to the (S, D) gradients of q and k rather than to the (S, S') score gradient. The probabilities
are recomputed in the backward pass instead of being held from the forward one (one batched
matmul more, (S, S') floats less per layer between forward and backward).

No library provides this for MindSpore on CPU (its FlashAttentionScore is Ascend-only), hence
the custom bprop. The forward pass is the same op sequence as DotProductAttention's, so outputs
are bit-identical; gradients agree to float rounding (tests/models/test_attention_core.py
against the autodiff of the plain formula).

With attention dropout the forward returns the dropout mask too, and the backward reuses it:
Σ_j P_ij·dP_ij still equals dO_i·O_i because O is computed from the dropped-out probabilities.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from petrun.models.broadcast import to_shape_of


class SoftmaxAttention(nn.Cell):
    """construct(query, key, value, bias) → (B, N, S, D), or (out, dropout mask) while dropping.

    query (B, N, S, D); key, value (B, N, S', D) already repeated to N heads; bias broadcastable
    to (B, N, S, S'), 0 where a key may be attended and the dtype's lowest value where not. All
    fp32 (the additive-mask path of DotProductAttention). Not for sharded (semi-auto) runs: its
    backward primitives carry no strategies, so DotProductAttention keeps its own ops there.
    full_broadcast: the bias and the row sums broadcast before their add/subtract (CPU; see
    models/broadcast.py); set by kernels.broadcast_first.
    """
    full_broadcast = False

    def __init__(self, scale_value: float, attention_dropout: float = 0.0, dropout_op=None):
        """dropout_op: the seeded ops.Dropout to draw masks with (DotProductAttention passes its
        nn.Dropout's, seeded from ms.set_seed as nn.Dropout seeds it); None: a new one, seeded
        the same way."""
        super().__init__()
        self.scale_value = float(scale_value)
        self.qk = ops.BatchMatMul(transpose_b=True)
        self.pv = ops.BatchMatMul()
        self.tn = ops.BatchMatMul(transpose_a=True)
        self.softmax = ops.Softmax(-1)
        self.row_sum = ops.ReduceSum(keep_dims=True)
        self.keep_prob = 1.0 - float(attention_dropout)
        self.use_dropout = self.keep_prob < 1.0
        if self.use_dropout:
            # An unseeded ops.Dropout draws different masks in every process whatever the seed.
            self.dropout = dropout_op or nn.Dropout(p=float(attention_dropout)).dropout

    def dropping(self) -> bool:
        """Whether calls return (out, mask): dropout configured and training."""
        return self.use_dropout and self.training

    def probs(self, query, key, bias):
        scores = self.qk(query, key) * self.scale_value
        return self.softmax(scores + to_shape_of(bias, scores, self.full_broadcast))

    def construct(self, query, key, value, bias):
        probs = self.probs(query, key, bias)
        if self.dropping():
            dropped, mask = self.dropout(probs)
            return self.pv(dropped, value), mask
        return self.pv(probs, value)

    def bprop(self, query, key, value, bias, out, dout):
        probs = self.probs(query, key, bias)
        if self.dropping():
            out, mask = out
            dout = dout[0]
            scale = mask * (1.0 / self.keep_prob)
            d_value = self.tn(probs * scale, dout)
            d_probs = self.qk(dout, value) * scale
        else:
            d_value = self.tn(probs, dout)
            d_probs = self.qk(dout, value)
        row = self.row_sum(dout * out, -1)
        d_scores = probs * (d_probs - to_shape_of(row, d_probs, self.full_broadcast))
        d_query = self.pv(d_scores, key) * self.scale_value
        d_key = self.tn(d_scores, query) * self.scale_value
        return d_query, d_key, d_value, ops.zeros_like(bias)
