"""A Hugging Face config.json → the `model:` section of a petrun YAML (MindFormers' key names).

The inverse of petrun.ckpt.hf.hf_config_dict, for the three layouts `petrun ckpt convert` reads:
transformers' LlamaForCausalLM (model_type llama), THUDM's remote-code ChatGLM2 (chatglm: its
config already uses MindFormers' ChatGLM2Config names) or transformers' GlmForCausalLM (glm), and
GPT2LMHeadModel (gpt2). Only architecture keys are mapped; run settings (seq_length, dtypes, the
PET method) come from the recipe the model runs with (petrun/store/recipes.py).

Values petrun's models cannot express are refused here, naming the config.json key, so a store
entry never holds a checkpoint that would later load into the wrong architecture.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from petrun.errors import UserError

ARCH = {"llama2": "LlamaForCausalLM", "glm2": "ChatGLM2ForConditionalGeneration",
        "gpt2": "GPT2LMHeadModel"}
CONFIG_TYPE = {"llama2": "LlamaConfig", "glm2": "ChatGLM2Config", "gpt2": "GPT2Config"}
# config.json model_type → family
MODEL_TYPES = {"llama": "llama2", "chatglm": "glm2", "glm": "glm2", "gpt2": "gpt2"}
# transformers' activation names for petrun's (MindSpore's fast_gelu is x·sigmoid(1.702x)).
_GPT2_ACT = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "quick_gelu": "fast_gelu"}


def read_hf_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("no config.json in this folder: petrun reads the model's sizes from it",
                        file=str(folder), key="--from",
                        fix="point --from at the Hugging Face model folder (config.json + "
                            "*.safetensors), or pass a .ckpt with --config YAML") from None
    except ValueError as e:
        raise UserError(f"config.json is not valid JSON ({e})", file=str(path), key="--from",
                        fix="restore the file from the model's original folder") from None
    if not isinstance(data, dict):
        raise UserError("config.json is not a JSON object", file=str(path), key="--from",
                        fix="restore the file from the model's original folder")
    return data


def family_of(hf: dict) -> str | None:
    return MODEL_TYPES.get(str(hf.get("model_type", "")))


def _need(hf: dict, where: str, *keys: str) -> Any:
    for k in keys:
        if hf.get(k) is not None:
            return hf[k]
    raise UserError(f"config.json has no {' / '.join(keys)}", file=where, key=keys[0],
                    fix="use the config.json that came with the weights")


def _refuse(where: str, key: str, value: Any, why: str) -> UserError:
    return UserError(f"{key} = {value!r}: {why}", file=where, key=key,
                     fix="petrun's models cannot load this variant; use a standard checkpoint "
                         "of the family")


def model_section(family: str, hf: dict, where: str) -> tuple[dict, int | None]:
    """({"arch": {"type"}, "model_config": {...}}, position capacity or None) for `hf`."""
    mc: dict[str, Any] = {"type": CONFIG_TYPE[family]}
    capacity: int | None = None
    if family == "gpt2":
        hidden = int(_need(hf, where, "n_embd", "hidden_size"))
        inner = hf.get("n_inner")
        if inner is not None and int(inner) % hidden:
            raise _refuse(where, "n_inner", inner, f"not a multiple of n_embd {hidden} "
                                                   "(GPT2Config has an integer expand_ratio)")
        act = hf.get("activation_function", "gelu_new")
        if act not in _GPT2_ACT:
            raise _refuse(where, "activation_function", act,
                          f"petrun's GPT2 computes {', '.join(sorted(_GPT2_ACT))}")
        capacity = int(_need(hf, where, "n_positions", "max_position_embeddings"))
        eos = int(hf.get("eos_token_id", 50256))
        mc.update(hidden_size=hidden, num_layers=int(_need(hf, where, "n_layer", "num_hidden_layers")),
                  num_heads=int(_need(hf, where, "n_head", "num_attention_heads")),
                  vocab_size=int(_need(hf, where, "vocab_size")),
                  max_position_embeddings=capacity,
                  expand_ratio=int(inner) // hidden if inner else 4, hidden_act=_GPT2_ACT[act],
                  bos_token_id=int(hf.get("bos_token_id", eos)), eos_token_id=eos,
                  # GPT-2 has no pad or unk token; MindFormers' GPT2Config uses eos for both
                  pad_token_id=eos, unk_token_id=eos)
    elif family == "llama2":
        hidden = int(_need(hf, where, "hidden_size"))
        heads = int(_need(hf, where, "num_attention_heads"))
        head_dim = hf.get("head_dim")
        if head_dim is not None and int(head_dim) * heads != hidden:
            raise _refuse(where, "head_dim", head_dim, f"head_dim × heads != hidden_size {hidden}")
        if hf.get("rope_scaling"):
            raise _refuse(where, "rope_scaling", hf["rope_scaling"],
                          "petrun's Llama2 has plain RoPE (Llama 2 has no rope scaling)")
        capacity = hf.get("max_position_embeddings")
        mc.update(hidden_size=hidden, num_layers=int(_need(hf, where, "num_hidden_layers")),
                  num_heads=heads, n_kv_heads=int(hf.get("num_key_value_heads") or heads),
                  intermediate_size=int(_need(hf, where, "intermediate_size")),
                  vocab_size=int(_need(hf, where, "vocab_size")),
                  rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
                  theta=float(hf.get("rope_theta", 10000.0)),
                  tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                  qkv_has_bias=bool(hf.get("attention_bias", False)),
                  bos_token_id=int(hf.get("bos_token_id", 1)),
                  eos_token_id=_first(hf.get("eos_token_id", 2)),
                  pad_token_id=int(hf.get("pad_token_id") or 0))
        if capacity:
            mc["max_position_embedding"] = int(capacity)
    else:
        if hf.get("model_type") == "chatglm":   # THUDM's config: MindFormers' own key names
            keys = ("num_layers", "padded_vocab_size", "hidden_size", "ffn_hidden_size",
                    "kv_channels", "num_attention_heads", "multi_query_attention",
                    "multi_query_group_num", "layernorm_epsilon", "rmsnorm", "add_bias_linear",
                    "add_qkv_bias", "post_layer_norm", "apply_residual_connection_post_layernorm",
                    "rope_ratio", "eos_token_id", "pad_token_id")
            mc.update({k: hf[k] for k in keys if hf.get(k) is not None})
            for k in ("num_layers", "padded_vocab_size", "hidden_size", "ffn_hidden_size",
                      "kv_channels", "num_attention_heads"):
                _need(hf, where, k)
            capacity = hf.get("seq_length")
        else:   # transformers' GlmForCausalLM
            if float(hf.get("partial_rotary_factor", 0.5)) != 0.5:
                raise _refuse(where, "partial_rotary_factor", hf["partial_rotary_factor"],
                              "ChatGLM2 rotates half of each head")
            heads = int(_need(hf, where, "num_attention_heads"))
            kv = int(hf.get("num_key_value_heads") or heads)
            mc.update(num_layers=int(_need(hf, where, "num_hidden_layers")),
                      padded_vocab_size=int(_need(hf, where, "vocab_size")),
                      hidden_size=int(_need(hf, where, "hidden_size")),
                      ffn_hidden_size=int(_need(hf, where, "intermediate_size")),
                      kv_channels=int(_need(hf, where, "head_dim")), num_attention_heads=heads,
                      multi_query_attention=kv != heads, multi_query_group_num=kv,
                      layernorm_epsilon=float(hf.get("rms_norm_eps", 1e-5)),
                      rope_ratio=float(hf.get("rope_theta", 10000.0)) / 10000.0,
                      add_qkv_bias=bool(hf.get("attention_bias", True)),
                      eos_token_id=_first(hf.get("eos_token_id", 2)),
                      pad_token_id=int(hf.get("pad_token_id") or 0))
            capacity = hf.get("max_position_embeddings")
        if not mc.get("rmsnorm", True):
            raise _refuse(where, "rmsnorm", False, "petrun's ChatGLM2 uses RMSNorm")
    return {"arch": {"type": ARCH[family]}, "model_config": mc}, \
        (int(capacity) if capacity else None)


def _first(value: Any) -> int:
    """eos_token_id may be a list in newer configs; the first is the model's own."""
    return int(value[0] if isinstance(value, list) else value)
