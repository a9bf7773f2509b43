"""The one place the three model families get attention, RMSNorm and rotary embedding from.

kernels_for(family, config, device_target) is petrun.models.kernel_choice.select_kernels (which
documents each YAML switch and the MindFormers r1.3 source it follows) plus the chip check; the
factories below turn the choice into cells. With the composite choice (every device but Ascend)
they return exactly the cells the models used before this module existed — same classes,
parameters and primitives — so CPU runs compute the same graph.

The fused cells call the primitives through PRIMITIVES, the only way they are created. Tests put
reference implementations of the primitives' documented semantics there (stand_ins) to check on
CPU that the models feed them the right layouts, masks and arguments; that does not test the
Ascend kernels themselves, which petrun has not run.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from contextlib import contextmanager

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer

from petrun.errors import UserError
from petrun.models.kernel_choice import COMPOSITE, FA_NO_LIMIT, KernelChoice, select_kernels
from petrun.models.layers import ApplyRotary, DotProductAttention, RMSNorm

log = logging.getLogger("petrun")


def _flash_attention_score(**kwargs):
    from mindspore.ops.operations.nn_ops import FlashAttentionScore
    return FlashAttentionScore(**kwargs)


def _rms_norm(epsilon):
    return ops.RmsNorm(epsilon)


# name → factory taking the primitive's own constructor arguments.
PRIMITIVES = {"FlashAttentionScore": _flash_attention_score, "RmsNorm": _rms_norm}


@contextmanager
def stand_ins(**factories):
    """Models built inside get these factories instead of PRIMITIVES' (tests only)."""
    unknown = set(factories) - set(PRIMITIVES)
    if unknown:
        raise KeyError(f"no fused primitive named {sorted(unknown)}")
    saved = dict(PRIMITIVES)
    PRIMITIVES.update(factories)
    try:
        yield
    finally:
        PRIMITIVES.clear()
        PRIMITIVES.update(saved)


def _soc_version() -> str | None:
    try:   # MindFormers' version_control.get_ascend_soc_version, for MindSpore >= 2.2
        from mindspore._c_expression import MSContext
        return MSContext.get_instance().get_ascend_soc_version()
    except Exception:   # noqa: BLE001 — no Ascend runtime: the chip is unknown
        return None


CPU_COMPOSITE = dataclasses.replace(COMPOSITE, full_broadcast=True, gather_heads=True)


def kernels_for(family: str, config, device_target: str | None) -> KernelChoice:
    if device_target != "Ascend":
        return CPU_COMPOSITE if device_target == "CPU" else COMPOSITE
    choice = select_kernels(family, config, device_target, _soc_version())
    log.info("%s on Ascend: %s; rotary by %s", family,
             ", ".join(choice.fused) or "no fused kernels", choice.rope_form)
    return choice


# ---------------------------------------------------------------------------------------------
# Factories: what each model cell calls.


def broadcast_first(cell, kernels: KernelChoice | None):
    """`cell` (a composite cell with a full_broadcast flag) set as the choice says: on CPU it
    broadcasts small operands itself (models/broadcast.py). Returns the cell."""
    cell.full_broadcast = bool(kernels is not None and kernels.full_broadcast)
    return cell


def heads_by_gather(cell, kernels: KernelChoice | None):
    """`cell` (an attention cell with a gather_heads flag) set as the choice says: on CPU it
    swaps head layouts without Transpose (models/broadcast.swap_seq_heads). Returns the cell."""
    cell.gather_heads = bool(kernels is not None and kernels.gather_heads)
    return cell


def attention_core(kernels: KernelChoice | None, head_dim: int, num_heads: int,
                   n_kv_heads: int | None = None, compute_dtype=ms.float32,
                   softmax_compute_type=ms.float32, attention_dropout: float = 0.0):
    """DotProductAttention, or FlashAttentionCore when flash attention is selected."""
    if kernels is None or not kernels.flash_attention:
        core = DotProductAttention(head_dim, num_heads, n_kv_heads, compute_dtype=compute_dtype,
                                   softmax_compute_type=softmax_compute_type,
                                   attention_dropout=attention_dropout)
        if core.fast_core is not None:
            broadcast_first(core.fast_core, kernels)
        return core
    return FlashAttentionCore(head_dim, num_heads, n_kv_heads, compute_dtype=compute_dtype,
                              attention_dropout=attention_dropout,
                              pre_tokens=kernels.fa_pre_tokens, next_tokens=kernels.fa_next_tokens,
                              mask_compression=kernels.fa_mask_compression)


def rms_norm(kernels: KernelChoice | None, dim: int, eps: float = 1e-5,
             compute_type=ms.float32):
    """RMSNorm, or FusedRMSNorm (the RmsNorm primitive) when selected."""
    if kernels is None or not kernels.fused_rms_norm:
        return broadcast_first(RMSNorm(dim, eps, compute_type), kernels)
    return FusedRMSNorm(dim, eps, compute_type, recompute_cast=kernels.norm_cast_recompute)


def rotary(kernels: KernelChoice | None, head_dim: int, rotary_dtype=ms.float32):
    """Llama's rotate-half rotary: ApplyRotary (slices), or SwapRotary (MindFormers' default
    swap-matrix BatchMatMul, use_rope_slice False) on Ascend."""
    if kernels is None or kernels.rope_form == "slice":
        return broadcast_first(ApplyRotary(), kernels)
    return SwapRotary(head_dim, rotary_dtype)


# ---------------------------------------------------------------------------------------------
# Fused cells


class FlashAttentionCore(nn.Cell):
    """FlashAttentionScore behind DotProductAttention's interface.

    construct(query, key, value, attention_mask, prefix_key_value=None): query (B, N, S, D); key,
    value (B, Nkv, S', D), RoPE applied; attention_mask (B or 1, 1, S, S'), 1 = may attend
    (petrun's convention); prefix_key_value as DotProductAttention. Returns (B, N, S, D) in
    compute_dtype.

    As MindFormers r1.3 (modules/flash_attention.py; the callers in llama_transformer.py,
    glm2_transformer.py, transformer.py): layout BNSD, head_num = query heads (the kernel groups
    query heads over the key/value heads itself, so keys are not repeated), scale_value
    1/sqrt(head_dim), keep_prob 1 - attention dropout, inner_precise 0, sparse_mode 0 with the
    full mask as uint8, 1 = masked (LowerTriangularMaskWithDynamic casts 1 - mask to uint8),
    broadcast to (B, 1, S, S'), and the family's pre_tokens with next_tokens 0.

    One deviation: with a prefix (P-Tuning v2, prefix tuning) or a KV cache the keys outnumber
    the queries, and the band next_tokens 0 marks (from the top-left, per the sparse_mode 0
    docs) keys past the query's own index as not computed — it would hide real keys the mask
    allows. Those calls use a primitive with both band limits at their no-limit default, so the
    mask alone decides, as petrun's composite attention does. When queries and keys align, the
    band keeps MindFormers' causal cut, so the mask must be causal there — every mask the models
    build is (causal_mask, segment_causal_mask, widen_mask, a prefill's).

    mask_compression (Llama's use_attn_mask_compression): while training with aligned queries and
    keys, sparse_mode 2 (leftUpCausal: query i keeps key j <= i) with MindFormers' constant
    compressed mask, np.triu(ones((2048, 2048)), 1) as uint8, instead of the full mask. It hides
    no pad key, as in MindFormers: training rows are right-padded, so only pad queries, which
    carry no loss, see pad keys. Packed rows (block-causal masks) are refused with it at config
    time (preflight.run_setting_errors); eval, prefill and decode keep the full mask.
    """
    shard_kind = "flash_attention"   # heads checked like "attention"; see shard_strategies

    def __init__(self, head_dim: int, num_heads: int, n_kv_heads: int | None = None,
                 compute_dtype=ms.float16, attention_dropout: float = 0.0,
                 pre_tokens: int = FA_NO_LIMIT, next_tokens: int = 0,
                 input_layout: str = "BNSD", mask_compression: bool = False):
        super().__init__()
        n_kv_heads = n_kv_heads or num_heads
        if num_heads % n_kv_heads:
            raise UserError(f"num_heads ({num_heads}) must be a multiple of n_kv_heads "
                            f"({n_kv_heads})", key="model.model_config.n_kv_heads")
        if input_layout not in ("BNSD", "BSH"):
            raise ValueError(f"input_layout {input_layout!r}: BNSD or BSH")
        self.head_dim = int(head_dim)
        self.num_heads = int(num_heads)
        self.n_kv_heads = int(n_kv_heads)
        self.compute_dtype = compute_dtype
        self.input_layout = input_layout
        self.scale_value = 1.0 / math.sqrt(head_dim)
        keep_prob = 1.0 - float(attention_dropout)
        self.use_dropout = keep_prob < 1.0
        common = dict(head_num=self.num_heads, scale_value=self.scale_value, inner_precise=0,
                      input_layout=input_layout, sparse_mode=0)
        make = PRIMITIVES["FlashAttentionScore"]
        self.fa = make(keep_prob=1.0, pre_tokens=pre_tokens, next_tokens=next_tokens, **common)
        self.fa_open = make(keep_prob=1.0, pre_tokens=FA_NO_LIMIT, next_tokens=FA_NO_LIMIT,
                            **common)
        if self.use_dropout:
            # MindFormers' FlashAttention draws the bits with DropoutGenMask (keep_prob as fp16).
            self.fa_drop = make(keep_prob=keep_prob, pre_tokens=pre_tokens,
                                next_tokens=next_tokens, **common)
            self.fa_open_drop = make(keep_prob=keep_prob, pre_tokens=FA_NO_LIMIT,
                                     next_tokens=FA_NO_LIMIT, **common)
            self.drop_gen_mask = ops.DropoutGenMask()
            self.keep_prob = Tensor(keep_prob, ms.float16)
        self.mask_compression = bool(mask_compression)
        if self.mask_compression:
            if self.use_dropout:   # MindFormers' Llama, the one family with the switch, has none
                raise ValueError("mask compression is built without attention dropout")
            self.fa_causal = make(keep_prob=1.0, pre_tokens=pre_tokens, next_tokens=next_tokens,
                                  **{**common, "sparse_mode": 2})
            self.compressed_mask = Tensor(np.triu(np.ones((2048, 2048), np.uint8), 1), ms.uint8)

    def shard_strategies(self, dp: int, mp: int) -> dict:
        """MindFormers' FlashAttention._generate_flash_attention_strategy for BNSD, cp 1, no MQA
        split: q, k, v by (dp, mp) heads, the dropout bits likewise, the (B, 1, S, S') mask by
        dp (petrun/parallel/shard.py sets them under semi-auto parallel)."""
        heads, mask = (dp, mp, 1, 1), (dp, 1, 1, 1)
        out = {"fa": (heads, heads, heads, mask), "fa_open": (heads, heads, heads, mask)}
        if self.use_dropout:
            out.update(fa_drop=(heads,) * 4 + (mask,), fa_open_drop=(heads,) * 4 + (mask,))
        if self.mask_compression:    # the compressed (2048, 2048) mask whole, as MindFormers
            out["fa_causal"] = (heads, heads, heads, (1, 1))
        return out

    def _to_layout(self, x):
        if self.input_layout == "BNSD":
            return x
        batch, heads, seq, dim = x.shape
        return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (batch, seq, heads * dim))

    def construct(self, query, key, value, attention_mask, prefix_key_value=None):
        if prefix_key_value is not None:
            key = ops.cat((ops.cast(prefix_key_value[0], key.dtype), key), 2)
            value = ops.cat((ops.cast(prefix_key_value[1], value.dtype), value), 2)
            mask_batch, _, seq, _ = attention_mask.shape
            visible = ops.ones((mask_batch, 1, seq, prefix_key_value[0].shape[2]),
                               attention_mask.dtype)
            attention_mask = ops.cat((visible, attention_mask), -1)
        batch, _, q_len, _ = query.shape
        k_len = key.shape[2]
        open_band = prefix_key_value is not None or k_len != q_len
        discard = ops.broadcast_to(ops.cast(attention_mask < 0.5, ms.uint8),
                                   (batch, 1, q_len, k_len))
        q = self._to_layout(ops.cast(query, self.compute_dtype))
        k = self._to_layout(ops.cast(key, self.compute_dtype))
        v = self._to_layout(ops.cast(value, self.compute_dtype))
        if self.mask_compression and self.training and not open_band:
            out = self.fa_causal(q, k, v, None, None, None, self.compressed_mask, None)[3]
        elif self.use_dropout and self.training:
            bits = self.drop_gen_mask((batch, self.num_heads, q_len, k_len), self.keep_prob)
            bits = ops.reshape(bits, (batch, self.num_heads, q_len, k_len // 8))
            prim = self.fa_open_drop if open_band else self.fa_drop
            out = prim(q, k, v, None, bits, None, discard, None)[3]
        else:
            prim = self.fa_open if open_band else self.fa
            out = prim(q, k, v, None, None, None, discard, None)[3]
        if self.input_layout == "BSH":
            out = ops.transpose(ops.reshape(out, (batch, q_len, self.num_heads, self.head_dim)),
                                (0, 2, 1, 3))
        return out


class FusedRMSNorm(nn.Cell):
    """RMSNorm through the RmsNorm primitive: x cast to compute_type, RmsNorm(eps)(x, weight)[0],
    cast back to x's dtype — MindFormers' LlamaRMSNorm._rms_norm (models/llama/llama_layer.py);
    ChatGLM2RMSNorm._rms_norm (models/glm2/glm2_modules.py) is the same once its block's cast to
    layernorm_compute_type is counted. `weight` as RMSNorm's, so checkpoints are unchanged.
    recompute_cast: LlamaRMSNorm marks its input cast recompute() when not predicting, so
    backward rebuilds the compute_type copy from x instead of keeping it (a no-op without grad).
    """
    shard_kind = "fused_rmsnorm"

    def __init__(self, dim: int, eps: float = 1e-5, compute_type=ms.float32,
                 recompute_cast: bool = False):
        super().__init__()
        self.eps = float(eps)
        self.compute_type = compute_type
        self.weight = Parameter(initializer("ones", [int(dim)], compute_type), name="weight")
        self.norm = PRIMITIVES["RmsNorm"](self.eps)
        self.cast = ops.Cast()
        if recompute_cast:
            self.cast.recompute()

    @staticmethod
    def shard_strategies(dp: int, mp: int) -> dict:
        return {"norm": ((dp, 1, 1), (1,))}   # LlamaRMSNorm.shard: rows by dp, weight whole

    def construct(self, x):
        original_dtype = x.dtype
        return ops.cast(self.norm(self.cast(x, self.compute_type), self.weight)[0], original_dtype)


class SwapRotary(nn.Cell):
    """x·cos + rotate_half(x)·sin with rotate_half as x @ [[0, I], [-I, 0]] — MindFormers'
    RotaryEmbedding without use_rope_slice (modules/layers.py; FreqsMgr.get_swap_mask). The
    matrix holds one ±1 per column, so the product is exact: it equals ApplyRotary bit for bit.
    Same call as ApplyRotary: (x (B, N, S, head_dim), cos, sin), computed in the tables' dtype
    (rotary_dtype, which the swap matrix is stored in, as MindFormers does). MindFormers hands
    BatchMatMul the 2-D matrix, which only Ascend broadcasts; the matrix is broadcast to
    (B, N, D, D) here so the same cell runs (and is tested) on CPU."""
    shard_kind = "rotary_swap"

    def __init__(self, head_dim: int, rotary_dtype=ms.float32):
        super().__init__()
        half = int(head_dim) // 2
        eye, zero = np.eye(half, dtype=np.float32), np.zeros((half, half), np.float32)
        self.swap = Tensor(np.block([[zero, eye], [-eye, zero]]), rotary_dtype)
        self.bmm_swap = ops.BatchMatMul()
        self.mul_cos = ops.Mul()
        self.mul_sin = ops.Mul()
        self.add = ops.Add()

    @staticmethod
    def shard_strategies(dp: int, mp: int) -> dict:
        """RotaryEmbedding.shard (cp 1): heads by (dp, mp), the tables whole; the broadcast swap
        matrix is split like the heads it multiplies."""
        heads, whole = (dp, mp, 1, 1), (1, 1, 1, 1)
        return {"bmm_swap": (heads, heads), "mul_cos": (heads, whole), "mul_sin": (heads, whole),
                "add": (heads, heads)}

    def construct(self, x, cos, sin):
        original_dtype = x.dtype
        xr = ops.cast(x, cos.dtype)
        batch, heads, _, dim = x.shape
        swap = ops.broadcast_to(ops.cast(self.swap, cos.dtype), (batch, heads, dim, dim))
        rotated = self.bmm_swap(xr, swap)
        return ops.cast(self.add(self.mul_cos(xr, cos), self.mul_sin(rotated, sin)),
                        original_dtype)
