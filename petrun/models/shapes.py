"""Parameter names, shapes and dtypes of each model family, computed from the typed config alone.

No MindSpore here: `petrun plan` and the pre-flight use these tables to size a run and to check a
checkpoint's index before anything is built. tests/plan/test_shapes.py asserts that every table
equals the real model's `get_parameters()` (names, shapes, dtypes) for tiny configs, so a change to
a model file that is not mirrored here fails a test instead of silently skewing the planner.

A family registers one `Family` under its `model_config.type`:
  params(cfg, device_target) -> {name: ParamSpec}   MindFormers names, in the model's order
  dims(cfg) -> Dims                                  the sizes the activation/FLOP model needs
Adding a family = write those two functions next to the model and call `register_family`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

from petrun.models.configs import LlamaConfig, ModelConfigBase
from petrun.models.dtypes import canonical_dtype_name

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4, "int64": 8, "bool": 1,
               "uint8": 1, "int8": 1, "float64": 8}


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    dtype: str            # canonical name: float32 / float16 / bfloat16
    # "linear": weight [out, in] of a Linear layer; "matmul": another matmul weight (GPT2's in×out
    # projections); PET may target both; "embedding", "norm", "bias", "other"; the
    # planner adds "lora" (per-token adapter matmuls) and "encoder" (run once per batch).
    kind: str = "other"

    @property
    def linear(self) -> bool:
        return self.kind == "linear"

    @property
    def matmul(self) -> bool:
        return self.kind in ("linear", "matmul")

    @cached_property
    def size(self) -> int:
        return math.prod(int(d) for d in self.shape)

    @cached_property
    def nbytes(self) -> int:
        return self.size * DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class Dims:
    """What the activation, KV-cache and FLOP formulas need to know about a decoder."""
    num_layers: int
    hidden: int
    ffn: int               # intermediate width of one FFN branch
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    seq_length: int
    gated_ffn: bool = True         # SwiGLU (3 FFN matrices, gate*up kept for backward) vs GELU MLP
    norm: str = "rms"              # "rms" or "layer"
    rope: bool = True              # rotary embedding on q and k
    dropout: float = 0.0           # hidden/attention dropout during training (masks are kept)
    tied_embeddings: bool = False
    compute_dtype: str = "float32"
    softmax_dtype: str = "float32"
    residual_dtype: str = "float32"
    learned_positions: int = 0     # size of a learned position table (0: rotary, no limit)


@dataclass(frozen=True)
class Family:
    config_type: str
    params: Callable[[ModelConfigBase, str], dict]
    dims: Callable[[ModelConfigBase, str], Dims]


_FAMILIES: dict[str, Family] = {}


def register_family(config_type: str, params: Callable, dims: Callable) -> None:
    _FAMILIES[config_type] = Family(config_type, params, dims)


def family(config_type: str) -> Family | None:
    return _FAMILIES.get(config_type)


def known_families() -> list[str]:
    return sorted(_FAMILIES)


def device_dtype(name: str | None, device_target: str, default: str = "float32") -> str:
    """The dtype a config field ends up as on `device_target`: CPU has no bf16 kernels, so petrun
    computes and stores bf16 fields in fp32 there (petrun/models/dtypes.py)."""
    canon = canonical_dtype_name(name) if name not in (None, "", "None") else default
    if device_target == "CPU" and canon == "bfloat16":
        return "float32"
    return canon


def param_shapes(config: ModelConfigBase, device_target: str = "CPU") -> dict[str, ParamSpec]:
    fam = _FAMILIES.get(config.type)
    if fam is None:
        raise KeyError(config.type)
    return fam.params(config, device_target)


def model_dims(config: ModelConfigBase, device_target: str = "CPU") -> Dims:
    fam = _FAMILIES.get(config.type)
    if fam is None:
        raise KeyError(config.type)
    return fam.dims(config, device_target)


def _linear(out: dict, name: str, n_out: int, n_in: int, bias: bool, dtype: str) -> None:
    out[f"{name}.weight"] = ParamSpec((n_out, n_in), dtype, "linear")
    if bias:
        out[f"{name}.bias"] = ParamSpec((n_out,), dtype, "bias")


# --------------------------------------------------------------------------------------- Llama 2
def llama_params(cfg: LlamaConfig, device_target: str = "CPU") -> dict[str, ParamSpec]:
    """petrun/models/llama.py's parameters (reference/mindformers.md §6.1)."""
    param = device_dtype(cfg.param_init_type, device_target)
    embed = device_dtype(cfg.embedding_init_type or cfg.param_init_type, device_target)
    norm = device_dtype(cfg.layernorm_compute_type, device_target)
    h, q_out = cfg.hidden_size, cfg.num_heads * cfg.head_dim
    kv_out, ffn = cfg.kv_heads * cfg.head_dim, cfg.ffn_hidden_size
    out: dict[str, ParamSpec] = {
        "model.tok_embeddings.embedding_weight": ParamSpec((cfg.vocab_size, h), embed, "embedding")}

    def linear(name, n_out, n_in, bias):
        _linear(out, name, n_out, n_in, bias, param)

    for i in range(cfg.num_layers):
        p = f"model.layers.{i}"
        out[f"{p}.attention_norm.weight"] = ParamSpec((h,), norm, "norm")
        linear(f"{p}.attention.wq", q_out, h, cfg.qkv_has_bias)
        linear(f"{p}.attention.wk", kv_out, h, cfg.qkv_has_bias)
        linear(f"{p}.attention.wv", kv_out, h, cfg.qkv_has_bias)
        linear(f"{p}.attention.wo", h, q_out, cfg.attn_proj_has_bias)
        out[f"{p}.ffn_norm.weight"] = ParamSpec((h,), norm, "norm")
        linear(f"{p}.feed_forward.w1", ffn, h, False)
        linear(f"{p}.feed_forward.w3", ffn, h, False)
        linear(f"{p}.feed_forward.w2", h, ffn, False)
    out["model.norm_out.weight"] = ParamSpec((h,), norm, "norm")
    if not cfg.tie_word_embeddings:
        linear("lm_head", cfg.vocab_size, h, False)
    return out


def llama_dims(cfg: LlamaConfig, device_target: str = "CPU") -> Dims:
    compute = device_dtype(cfg.compute_dtype, device_target)
    return Dims(num_layers=cfg.num_layers, hidden=cfg.hidden_size, ffn=cfg.ffn_hidden_size,
                heads=cfg.num_heads, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim,
                vocab=cfg.vocab_size, seq_length=cfg.seq_length, gated_ffn=True, norm="rms",
                rope=True, dropout=0.0, tied_embeddings=bool(cfg.tie_word_embeddings),
                compute_dtype=compute,
                softmax_dtype=device_dtype(cfg.softmax_compute_type, device_target),
                residual_dtype=device_dtype(cfg.residual_dtype or cfg.compute_dtype, device_target))


register_family("LlamaConfig", llama_params, llama_dims)


# -------------------------------------------------------------------------------------- ChatGLM2
def glm2_params(cfg, device_target: str = "CPU") -> dict[str, ParamSpec]:
    """petrun/models/glm2.py's parameters (reference/mindformers.md §6.2)."""
    param = device_dtype(cfg.param_init_type, device_target)
    norm = device_dtype(cfg.layernorm_compute_type, device_target)
    h, f = cfg.hidden_size, cfg.ffn_hidden_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    bias = bool(cfg.add_bias_linear)
    out: dict[str, ParamSpec] = {
        "transformer.embedding.embedding_weight": ParamSpec((cfg.vocab, h), param, "embedding")}
    for i in range(cfg.num_layers):
        p = f"transformer.encoder.layers.{i}"
        out[f"{p}.input_layernorm.weight"] = ParamSpec((h,), norm, "norm")
        _linear(out, f"{p}.self_attention.query_key_value", q + 2 * kv, h,
                bias or bool(cfg.add_qkv_bias), param)
        _linear(out, f"{p}.self_attention.dense", h, q, bias, param)
        out[f"{p}.post_attention_layernorm.weight"] = ParamSpec((h,), norm, "norm")
        _linear(out, f"{p}.mlp.dense_h_to_4h", 2 * f, h, bias, param)
        _linear(out, f"{p}.mlp.dense_4h_to_h", h, f, bias, param)
    if cfg.post_layer_norm:
        out["transformer.encoder.final_layernorm.weight"] = ParamSpec((h,), norm, "norm")
    _linear(out, "transformer.output_layer", cfg.vocab, h, False, param)
    return out


def glm2_dims(cfg, device_target: str = "CPU") -> Dims:
    compute = device_dtype(cfg.compute_dtype, device_target)
    softmax = cfg.softmax_compute_type or ("float32" if cfg.attention_softmax_in_fp32
                                           else cfg.compute_dtype)
    return Dims(num_layers=cfg.num_layers, hidden=cfg.hidden_size, ffn=cfg.ffn_hidden_size,
                heads=cfg.num_attention_heads, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim,
                vocab=cfg.vocab, seq_length=cfg.seq_length, gated_ffn=True, norm="rms",
                rope=True, dropout=float(cfg.hidden_dropout or cfg.attention_dropout or 0.0),
                tied_embeddings=False, compute_dtype=compute,
                softmax_dtype=device_dtype(softmax, device_target),
                residual_dtype=device_dtype(cfg.residual_dtype or "float32", device_target))


# ------------------------------------------------------------------------------------------ GPT2
def gpt2_params(cfg, device_target: str = "CPU") -> dict[str, ParamSpec]:
    """petrun/models/gpt2.py's parameters (reference/mindformers.md §6.3). dense1-3 are Linear
    layers; projection and mapping are in×out matmul weights (PET targets them all)."""
    param = device_dtype(cfg.param_init_type, device_target)
    norm = device_dtype(cfg.layernorm_compute_type, device_target)
    h, f = cfg.hidden_size, cfg.ffn_hidden_size
    out: dict[str, ParamSpec] = {
        "backbone.embedding.word_embedding.embedding_table":
            ParamSpec((cfg.vocab_size, h), param, "embedding"),
        "backbone.embedding.position_embedding.embedding_table":
            ParamSpec((cfg.max_positions, h), param, "embedding")}

    def in_out(name, n_in, n_out):
        out[f"{name}.weight"] = ParamSpec((n_in, n_out), param, "matmul")
        out[f"{name}.bias"] = ParamSpec((n_out,), param, "bias")

    for i in range(cfg.num_layers):
        p = f"backbone.blocks.{i}"
        out[f"{p}.layernorm1.gamma"] = ParamSpec((h,), norm, "norm")
        out[f"{p}.layernorm1.beta"] = ParamSpec((h,), norm, "norm")
        for name in ("dense1", "dense2", "dense3"):
            _linear(out, f"{p}.attention.{name}", h, h, True, param)
        in_out(f"{p}.attention.projection", h, h)
        out[f"{p}.layernorm2.gamma"] = ParamSpec((h,), norm, "norm")
        out[f"{p}.layernorm2.beta"] = ParamSpec((h,), norm, "norm")
        in_out(f"{p}.output.mapping", h, f)
        in_out(f"{p}.output.projection", f, h)
    out["backbone.layernorm.gamma"] = ParamSpec((h,), norm, "norm")
    out["backbone.layernorm.beta"] = ParamSpec((h,), norm, "norm")
    return out


def gpt2_dims(cfg, device_target: str = "CPU") -> Dims:
    return Dims(num_layers=cfg.num_layers, hidden=cfg.hidden_size, ffn=cfg.ffn_hidden_size,
                heads=cfg.num_heads, kv_heads=cfg.num_heads, head_dim=cfg.head_dim,
                vocab=cfg.vocab_size, seq_length=cfg.seq_length, gated_ffn=False, norm="layer",
                rope=False, dropout=float(cfg.hidden_dropout_rate or cfg.attention_dropout_rate
                                          or 0.0),
                tied_embeddings=True, learned_positions=cfg.max_positions,
                compute_dtype=device_dtype(cfg.compute_dtype, device_target),
                softmax_dtype=device_dtype(cfg.softmax_compute_type, device_target),
                residual_dtype=device_dtype(cfg.compute_dtype, device_target))


register_family("ChatGLM2Config", glm2_params, glm2_dims)
register_family("GPT2Config", gpt2_params, gpt2_dims)
