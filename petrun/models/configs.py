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

DTYPES = ("float32", "float16", "bfloat16")

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

    def float_fields(self) -> tuple[str, ...]:
        return ()

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


MODEL_CONFIGS: dict[str, type[ModelConfigBase]] = {"LlamaConfig": LlamaConfig}
