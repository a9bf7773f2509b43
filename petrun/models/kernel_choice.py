"""Which implementation attention, RMSNorm and rotary embedding get: on Ascend, the fused kernels
MindFormers r1.3 selects behind its YAML switches; everywhere else petrun's composite ops.

Pure Python (no MindSpore) so the planner and the pre-flight can read the same decision the model
is built from; petrun/models/kernels.py turns it into cells. Sources (MindFormers tag v1.3.0):

- use_flash_attention — FlashAttentionScore instead of q·kᵀ → softmax → ·v, in all three families
  (models/llama/llama_transformer.py LLamaAttention, models/glm2/glm2_transformer.py
  ChatGLM2SelfAttention, modules/transformer/transformer.py MultiHeadAttention for GPT-2).
  Llama passes pre_tokens 2147483647, GLM2 and GPT-2 65536; all pass next_tokens 0, layout BNSD
  (BSH only with context_parallel > 1, which petrun refuses), sparse_mode 0 with the full
  (B, 1, S, S) uint8 mask, 1 = masked, and scale 1/sqrt(head_dim). GLM2 and GPT-2 pass
  keep_prob = 1 - attention dropout; Llama has no attention dropout.
- fused_rms_norm (Llama, default True) — the RmsNorm primitive instead of square/mean/rsqrt/mul
  (models/llama/llama_layer.py LlamaRMSNorm). ChatGLM2 has no switch: ChatGLM2RMSNorm uses the
  primitive whenever the kernel is valid (models/glm2/glm2_modules.py). Both fall back to the
  composite form on Ascend 910A (version_control.check_rmsnorm_big_kernel_valid). GPT-2 uses
  LayerNorm, which this module leaves alone.
- use_rope_slice (Llama, default False) — MindFormers' training rotary is always composite
  (modules/layers.py RotaryEmbedding): rotate_half is a BatchMatMul with a ±1 swap matrix unless
  use_rope_slice, which slices and negates the halves (petrun's CPU form). ChatGLM2's interleaved
  rotary is composite in MindFormers too. The fused ApplyRotaryPosEmb appears only inside
  MindFormers' InferAttention (use_past with PagedAttention), a path petrun's decode does not have.
- use_attn_mask_compression (Llama only, default False) — with flash attention, sparse_mode 2
  (leftUpCausal) and LowerTriangularMaskWithDynamic's constant np.triu(ones((2048, 2048)), 1)
  uint8 mask instead of the (B, 1, S, S) one (llama_transformer.py LLamaAttention,
  modules/transformer/transformer.py); that mask hides no pad key, which changes nothing for
  right-padded training rows (pad queries carry no loss). petrun uses it only where it equals
  the full mask: training, no prefix or cache, no packing (kernels.FlashAttentionCore).
- softmax_compute_type and rotary_dtype are dtypes (petrun/models/dtypes.py); they shape the
  composite paths on every device. FlashAttentionScore computes its softmax internally.
"""
from __future__ import annotations

from dataclasses import dataclass

FA_NO_LIMIT = 2147483647     # FlashAttentionScore's "no band limit" default for pre/next_tokens
ROPE_FORMS = ("slice", "swap_matmul")
_910A = ("910a", "ascend910")   # MindFormers' version_control.is_910a names


@dataclass(frozen=True)
class KernelChoice:
    """What a model family is built with; the default is petrun's composite CPU implementation."""
    flash_attention: bool = False
    fused_rms_norm: bool = False
    rope_form: str = "slice"
    # FlashAttentionScore band arguments, as MindFormers passes them for the family.
    fa_pre_tokens: int = FA_NO_LIMIT
    fa_next_tokens: int = 0
    # Llama's fused RmsNorm recomputes its input cast in training (LlamaRMSNorm:
    # self.cast.recompute() unless predicting), so backward keeps x, not its fp32 copy.
    norm_cast_recompute: bool = False
    # Llama's use_attn_mask_compression: FlashAttentionScore sparse_mode 2 (leftUpCausal) with the
    # constant compressed (2048, 2048) mask instead of sparse_mode 0 with the full (B,1,S,S) one.
    fa_mask_compression: bool = False
    # CPU: the composite cells broadcast their small operands before Add/Sub/Mul, because
    # MindSpore's CPU broadcasting kernels keep output-sized index tables (models/broadcast.py).
    full_broadcast: bool = False
    # CPU: the attention cells split and merge heads by a row Gather, not Transpose, whose CPU
    # kernel keeps an output-sized index table too (models/broadcast.py).
    gather_heads: bool = False

    @property
    def fused(self) -> tuple[str, ...]:
        """Names of the fused kernels selected, for logs and the planner."""
        out = []
        if self.flash_attention:
            out.append("FlashAttentionScore")
        if self.fused_rms_norm:
            out.append("RmsNorm")
        return tuple(out)


COMPOSITE = KernelChoice()


def select_kernels(family: str, config, device_target: str | None,
                   soc_version: str | None = None) -> KernelChoice:
    """The kernels `config` (a model config dataclass, or any object with its switch attributes)
    selects for `family` ("llama2", "glm2", "gpt2") on `device_target`. Anything but Ascend gets
    COMPOSITE: the fused primitives have no CPU/GPU kernels (reference/feasibility.md §1a).
    soc_version: the Ascend chip name when known; on 910A RmsNorm stays composite, as in
    MindFormers."""
    if device_target != "Ascend":
        return COMPOSITE
    flash = bool(getattr(config, "use_flash_attention", False))
    old_chip = str(soc_version or "").lower() in _910A
    if family == "llama2":
        fused_norm = bool(getattr(config, "fused_rms_norm", True)) and not old_chip
        return KernelChoice(
            flash_attention=flash, fused_rms_norm=fused_norm, norm_cast_recompute=fused_norm,
            fa_mask_compression=flash and bool(getattr(config, "use_attn_mask_compression", False)),
            rope_form="slice" if getattr(config, "use_rope_slice", False) else "swap_matmul",
            fa_pre_tokens=FA_NO_LIMIT, fa_next_tokens=0)
    if family == "glm2":
        return KernelChoice(flash_attention=flash, fused_rms_norm=not old_chip,
                            fa_pre_tokens=65536, fa_next_tokens=0)
    if family == "gpt2":
        return KernelChoice(flash_attention=flash, fa_pre_tokens=65536, fa_next_tokens=0)
    raise ValueError(f"unknown model family {family!r}")


# FlashAttentionScore's documented limits (MindSpore's mindspore.ops.flash_attention_score, r2.5
# and stable docs: query/key/value float16 or bfloat16; D a multiple of 16, at most 512; N1 1 to
# 256; N2 a factor of N1, which every family's config check already enforces).
FA_DTYPES = ("float16", "bfloat16")
FA_HEAD_DIM_MULTIPLE, FA_MAX_HEAD_DIM, FA_MAX_HEADS = 16, 512, 256
FAMILY_OF_CONFIG = {"LlamaConfig": "llama2", "ChatGLM2Config": "glm2", "GPT2Config": "gpt2"}
# the YAML key that sets each family's head size
_HEAD_DIM_KEY = {"llama2": ("hidden_size", "hidden_size / num_heads"),
                 "glm2": ("kv_channels", "kv_channels"),
                 "gpt2": ("hidden_size", "hidden_size / num_heads")}


def flash_attention_errors(config, device_target: str | None) -> list:
    """UserErrors for what FlashAttentionScore cannot take when `config` (a typed model config)
    selects it on `device_target`; [] when the composite attention runs. The pre-flight and
    `config validate` report them (petrun/preflight.py) before anything is built (not the model
    build: tests build fp32 models with reference stand-ins for the kernel)."""
    from petrun.errors import UserError
    from petrun.models.shapes import model_dims
    family = FAMILY_OF_CONFIG.get(getattr(config, "type", ""))
    if family is None or not select_kernels(family, config, device_target).flash_attention:
        return []
    dims = model_dims(config, device_target)
    off = "or set model.model_config.use_flash_attention: False (composite attention)"
    errors = []
    if dims.compute_dtype not in FA_DTYPES:
        errors.append(UserError(
            f"use_flash_attention on Ascend runs FlashAttentionScore, which takes float16 or "
            f"bfloat16 query/key/value only, but compute_dtype is {dims.compute_dtype}",
            key="model.model_config.compute_dtype",
            fix=f"set model.model_config.compute_dtype: bfloat16 (or float16), {off}"))
    key, what = _HEAD_DIM_KEY[family]
    d = dims.head_dim
    if d % FA_HEAD_DIM_MULTIPLE or d > FA_MAX_HEAD_DIM:
        errors.append(UserError(
            f"use_flash_attention on Ascend runs FlashAttentionScore, whose head size must be a "
            f"multiple of {FA_HEAD_DIM_MULTIPLE} and at most {FA_MAX_HEAD_DIM}, but {what} is "
            f"{d}", key=f"model.model_config.{key}",
            fix=f"choose {what} as a multiple of {FA_HEAD_DIM_MULTIPLE} up to "
                f"{FA_MAX_HEAD_DIM}, {off}"))
    if dims.heads > FA_MAX_HEADS:
        heads_key = "num_attention_heads" if family == "glm2" else "num_heads"
        errors.append(UserError(
            f"use_flash_attention on Ascend runs FlashAttentionScore, which takes at most "
            f"{FA_MAX_HEADS} query heads, but {heads_key} is {dims.heads}",
            key=f"model.model_config.{heads_key}", fix=f"use at most {FA_MAX_HEADS} heads, {off}"))
    return errors
