"""Model hyper-parameters as plain dataclasses (no MindSpore import).

Field names and defaults follow MindFormers' config classes (reference/mindformers.md §1.11) so a
`model.model_config` section from a MindFormers YAML maps onto them key for key. The schema in
petrun/config validates keys against these fields; the model code builds from them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from petrun.errors import UserError

DTYPES = ("float32", "float16", "bfloat16")
_KEY = "model.model_config"
GPT2_ACTIVATIONS = ("gelu", "fast_gelu")

# Keys every model_config may carry that only matter for generation/loading/Ascend kernels.
# They are accepted and kept; petrun's CPU models read the generation ones at predict time.
GENERATION_KEYS = {
    "batch_size": 1, "checkpoint_name_or_path": "", "repetition_penalty": 1.0,
    "max_decode_length": 1024, "top_k": 5, "top_p": 1.0, "do_sample": True, "use_past": False,
    "is_dynamic": False, "block_size": 16, "num_blocks": 512, "use_flash_attention": False,
    "offset": 0, "fine_grain_interleave": 1, "use_attn_mask_compression": False,
    "use_prompt_flash_attention": False, "use_paged_attention": False,
}


@dataclass
class ModelConfigBase:
    type: str = ""
    batch_size: int = 1
    checkpoint_name_or_path: Any = ""
    repetition_penalty: float = 1.0
    max_decode_length: int = 1024
    # MindFormers' GenerationConfig reads max_decode_length, then lets max_length override it
    # (r1.0–r1.3 generation_config.py); both bound prompt + generated tokens.
    max_length: Any = None
    top_k: int = 5
    top_p: float = 1.0
    do_sample: bool = True
    use_past: bool = False
    is_dynamic: bool = False
    block_size: int = 16
    num_blocks: int = 512
    use_flash_attention: bool = False
    use_attn_mask_compression: bool = False
    use_prompt_flash_attention: bool = False
    use_paged_attention: bool = False
    offset: Any = 0
    fine_grain_interleave: int = 1
    # pet_config is validated by petrun.pet.config; kept here as the raw mapping.
    pet_config: Any = None

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfigBase":
        """Build from a (validated) mapping; unknown keys are ignored here (the schema rejects them)."""
        names = cls.field_names()
        kwargs = {k: v for k, v in dict(d).items() if k in names}
        cfg = cls(**kwargs)
        cfg.normalize()
        return cfg

    def normalize(self) -> None:
        """Coerce MindFormers' YAML quirks: "1e-5" strings, "None" strings."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, str) and v == "None" and f.name not in ("extend_method",):
                setattr(self, f.name, None)
        for name in self.float_fields():
            v = getattr(self, name)
            if isinstance(v, str):
                setattr(self, name, float(v))
        if self.max_length is not None:
            self.max_decode_length = int(self.max_length)

    def float_fields(self) -> tuple[str, ...]:
        return ()

    def check(self) -> None:
        """A UserError for settings the family's model cannot build. Here, not in the MindSpore
        model modules, so `config validate` and the pre-flight run the same check as the build."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class LlamaConfig(ModelConfigBase):
    type: str = "LlamaConfig"
    seq_length: int = 2048
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    n_kv_heads: Any = None
    max_position_embedding: Any = None
    intermediate_size: Any = None
    vocab_size: int = 32000
    multiple_of: int = 256
    ffn_dim_multiplier: Any = None
    rms_norm_eps: float = 1e-5
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    ignore_token_id: int = -100
    theta: float = 10000.0
    compute_dtype: str = "float16"
    layernorm_compute_type: str = "float32"
    softmax_compute_type: str = "float32"
    rotary_dtype: str = "float32"
    param_init_type: str = "float16"
    residual_dtype: Any = None
    embedding_init_type: Any = None
    qkv_has_bias: bool = False
    qkv_concat: bool = False
    attn_proj_has_bias: bool = False
    extend_method: str = "None"
    scaling_factor: float = 1.0
    init_method_std: float = 0.01
    tie_word_embeddings: bool = False
    fused_rms_norm: bool = True
    use_rope_slice: bool = False
    parallel_optimizer: bool = False

    def float_fields(self):
        return ("rms_norm_eps", "theta", "scaling_factor", "init_method_std")

    def check(self) -> None:
        if self.hidden_size % self.num_heads:
            raise UserError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
                            f"({self.num_heads})", key=f"{_KEY}.num_heads")
        if self.num_heads % self.kv_heads:
            raise UserError(f"num_heads ({self.num_heads}) must be a multiple of n_kv_heads "
                            f"({self.kv_heads})", key=f"{_KEY}.n_kv_heads")
        if self.qkv_concat:
            raise UserError("qkv_concat (fused w_qkv weights) is not supported by petrun's Llama; "
                            "set it to False (checkpoints with separate wq/wk/wv load as they are)",
                            key=f"{_KEY}.qkv_concat")

    @property
    def kv_heads(self) -> int:
        return int(self.n_kv_heads) if self.n_kv_heads else int(self.num_heads)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def ffn_hidden_size(self) -> int:
        """MindFormers' FFN rule: 4h, ×(multiplier+0.01) if set, ×2/3, round up to multiple_of."""
        if self.intermediate_size:
            return int(self.intermediate_size)
        hidden = 4 * self.hidden_size
        if self.ffn_dim_multiplier is not None:
            hidden = int((float(self.ffn_dim_multiplier) + 0.01) * hidden)
        hidden = int(2 * hidden / 3)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    @property
    def max_positions(self) -> int:
        return int(max(self.max_position_embedding or 0, self.seq_length))


@dataclass
class ChatGLM2Config(ModelConfigBase):
    """MindFormers' ChatGLM2Config: field names and defaults are glm2-6b's (§1.11).

    The vocabulary size is `padded_vocab_size` (MindFormers copies it to vocab_size and ignores a
    vocab_size key); heads are `num_attention_heads`, each `kv_channels` wide; with
    multi_query_attention the keys/values have `multi_query_group_num` heads.
    """
    type: str = "ChatGLM2Config"
    num_layers: int = 28
    padded_vocab_size: int = 65024
    vocab_size: Any = None
    hidden_size: int = 4096
    ffn_hidden_size: int = 13696
    kv_channels: int = 128
    num_attention_heads: int = 32
    seq_length: int = 2048
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    layernorm_epsilon: float = 1e-5
    rope_ratio: float = 1
    rmsnorm: bool = True
    apply_residual_connection_post_layernorm: bool = False
    post_layer_norm: bool = True
    add_bias_linear: bool = False
    add_qkv_bias: bool = True
    bias_dropout_fusion: bool = True
    multi_query_attention: bool = True
    multi_query_group_num: int = 2
    apply_query_key_layer_scaling: bool = True
    attention_softmax_in_fp32: bool = True
    fp32_residual_connection: bool = False
    quantization_bit: int = 0
    pre_seq_len: Any = None
    prefix_projection: bool = False
    param_init_type: str = "float16"
    compute_dtype: str = "float16"
    layernorm_compute_type: str = "float32"
    softmax_compute_type: Any = None     # None: float32 when attention_softmax_in_fp32
    residual_dtype: Any = "float32"
    rotary_dtype: Any = None             # None: compute_dtype
    eos_token_id: int = 2
    pad_token_id: int = 0
    gmask_token_id: Any = None
    bos_token_id: Any = None
    checkpoint_name_or_path: Any = None
    num_blocks: int = 128
    enable_high_performance: bool = False
    pp_interleave_num: int = 1
    mlp_concat: bool = True
    qkv_concat: bool = True
    use_rearrange_rope: bool = False
    mask_generate: Any = None
    use_ring_attention: bool = False

    def float_fields(self):
        return ("layernorm_epsilon", "rope_ratio", "hidden_dropout", "attention_dropout")

    def check(self) -> None:
        """Options MindFormers offers that petrun's ChatGLM2 does not implement are errors, not
        no-ops."""
        if self.vocab_size is not None and int(self.vocab_size) != self.vocab:
            raise UserError(f"vocab_size {self.vocab_size} differs from padded_vocab_size "
                            f"{self.padded_vocab_size}; ChatGLM2 sizes its vocabulary by "
                            "padded_vocab_size (MindFormers ignores vocab_size)",
                            key=f"{_KEY}.padded_vocab_size",
                            fix=f"set padded_vocab_size: {self.vocab_size} and drop vocab_size")
        n, groups = self.num_attention_heads, self.multi_query_group_num
        if self.multi_query_attention and (groups <= 0 or n % groups):
            raise UserError(f"num_attention_heads ({n}) must be a multiple of multi_query_group_num "
                            f"({groups})", key=f"{_KEY}.multi_query_group_num")
        if self.kv_channels % 4:
            raise UserError(f"kv_channels ({self.kv_channels}) must be a multiple of 4: rotary "
                            "embedding covers half of each head in pairs", key=f"{_KEY}.kv_channels")
        unsupported = {
            "rmsnorm": (not self.rmsnorm, "True (ChatGLM2 uses RMSNorm)"),
            "qkv_concat": (not self.qkv_concat, "True (checkpoints keep the fused query_key_value)"),
            "mlp_concat": (not self.mlp_concat, "True (checkpoints keep the fused dense_h_to_4h)"),
            "use_rearrange_rope": (bool(self.use_rearrange_rope), "False"),
            "quantization_bit": (bool(self.quantization_bit), "0"),
            # MindFormers leaves scores unscaled when False, but only on its non-flash path;
            # HF ChatGLM2 always scales, so only True has one meaning.
            "apply_query_key_layer_scaling": (not self.apply_query_key_layer_scaling, "True"),
        }
        for name, (bad, want) in unsupported.items():
            if bad:
                raise UserError(f"{name}: {getattr(self, name)!r} is not supported by petrun's "
                                "ChatGLM2", key=f"{_KEY}.{name}", fix=f"set {name}: {want}")

    @property
    def vocab(self) -> int:
        return int(self.padded_vocab_size)

    @property
    def kv_heads(self) -> int:
        return int(self.multi_query_group_num) if self.multi_query_attention \
            else int(self.num_attention_heads)

    @property
    def head_dim(self) -> int:
        return int(self.kv_channels)


# GPT2 sizes: (hidden_size, num_layers, num_heads, seq_length, hidden_act). small/xl/13b are
# MindFormers' run_gpt2*.yaml values; medium and large are OpenAI's released sizes.
GPT2_SIZES = {
    "small": (768, 12, 12, 1024, "gelu"),
    "medium": (1024, 24, 16, 1024, "gelu"),
    "large": (1280, 36, 20, 1024, "gelu"),
    "xl": (1600, 48, 25, 1024, "fast_gelu"),
    "13b": (5120, 40, 40, 2048, "fast_gelu"),
}


@dataclass
class GPT2Config(ModelConfigBase):
    """MindFormers' GPT2Config (defaults = gpt2 small; other sizes in GPT2_SIZES)."""
    type: str = "GPT2Config"
    eos_token_id: int = 50256
    pad_token_id: int = 50256
    bos_token_id: int = 50256
    unk_token_id: int = 50256
    seq_length: int = 1024
    max_position_embeddings: Any = None   # None: seq_length
    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    num_labels: int = 2
    expand_ratio: int = 4
    embedding_dropout_prob: float = 0.1
    hidden_dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    param_init_type: str = "float32"
    layernorm_compute_type: str = "float32"
    softmax_compute_type: str = "float32"
    compute_dtype: str = "float16"
    hidden_act: str = "gelu"
    post_layernorm_residual: bool = False

    def float_fields(self):
        return ("embedding_dropout_prob", "hidden_dropout_rate", "attention_dropout_rate")

    def check(self) -> None:
        if self.hidden_size % self.num_heads:
            raise UserError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
                            f"({self.num_heads})", key=f"{_KEY}.num_heads")
        if self.hidden_act not in GPT2_ACTIVATIONS:
            raise UserError(f"hidden_act {self.hidden_act!r} is not supported for GPT2",
                            key=f"{_KEY}.hidden_act", fix=f"use one of: {', '.join(GPT2_ACTIVATIONS)}")
        if self.post_layernorm_residual:
            raise UserError("post_layernorm_residual: True is not supported by petrun's GPT2 "
                            "(GPT-2 checkpoints are pre-LayerNorm)",
                            key=f"{_KEY}.post_layernorm_residual", fix="set it to False")
        if self.max_positions < self.seq_length:
            raise UserError(f"max_position_embeddings ({self.max_position_embeddings}) is shorter "
                            f"than seq_length ({self.seq_length})",
                            key=f"{_KEY}.max_position_embeddings",
                            fix="leave it unset (= seq_length) or make it at least seq_length")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def ffn_hidden_size(self) -> int:
        return self.hidden_size * self.expand_ratio

    @property
    def max_positions(self) -> int:
        return int(self.max_position_embeddings or self.seq_length)


MODEL_CONFIGS: dict[str, type[ModelConfigBase]] = {
    "LlamaConfig": LlamaConfig, "ChatGLM2Config": ChatGLM2Config, "GPT2Config": GPT2Config}
