"""Tiny random models of the three families for the inference tests.

`petrun_model(family)` builds petrun's model with random weights (no torch needed).
`hf_pair(family, tmp)` builds the HF transformers model, converts its weights with
petrun.ckpt.hf (the converter `petrun ckpt convert` runs) and loads them strictly into petrun's
model, for the parity tests (`parity` extra).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

VOCAB, HIDDEN, LAYERS, HEADS, POSITIONS = 97, 32, 2, 4, 64

MODEL_CONFIGS = {
    "llama2": ("LlamaForCausalLM", {
        "type": "LlamaConfig", "vocab_size": VOCAB, "hidden_size": HIDDEN, "num_layers": LAYERS,
        "num_heads": HEADS, "n_kv_heads": 2, "intermediate_size": 48, "seq_length": POSITIONS,
        "rms_norm_eps": 1e-5, "theta": 500.0, "compute_dtype": "float32",
        "param_init_type": "float32", "rotary_dtype": "float32", "pad_token_id": 0,
        "init_method_std": 0.2}),
    "glm2": ("ChatGLM2ForConditionalGeneration", {
        "type": "ChatGLM2Config", "padded_vocab_size": VOCAB, "hidden_size": HIDDEN,
        "num_layers": LAYERS, "num_attention_heads": HEADS, "multi_query_group_num": 2,
        "kv_channels": 8, "ffn_hidden_size": 40, "seq_length": POSITIONS, "rope_ratio": 0.05,
        "layernorm_epsilon": 1e-5, "compute_dtype": "float32", "param_init_type": "float32"}),
    "gpt2": ("GPT2LMHeadModel", {
        "type": "GPT2Config", "vocab_size": VOCAB, "hidden_size": HIDDEN, "num_layers": LAYERS,
        "num_heads": HEADS, "seq_length": POSITIONS, "compute_dtype": "float32",
        "param_init_type": "float32", "hidden_act": "gelu", "pad_token_id": 0,
        "eos_token_id": 2, "bos_token_id": 1, "hidden_dropout_rate": 0.0,
        "attention_dropout_rate": 0.0, "embedding_dropout_prob": 0.0}),
}
FAMILIES = tuple(MODEL_CONFIGS)


def model_section(family: str, **changes) -> dict:
    arch, mc = MODEL_CONFIGS[family]
    return {"arch": {"type": arch}, "model_config": {**mc, **changes}}


def randomize(net, seed: int = 0, scale: float = 0.2) -> None:
    """Fresh N(0, scale) weights (norm scales around 1), so logits are far from ties."""
    import mindspore as ms

    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        value = rng.normal(0.0, scale, p.shape).astype(np.float32)
        if "norm" in p.name and (p.name.endswith("weight") or p.name.endswith("gamma")):
            value += 1.0
        p.set_data(ms.Tensor(value, p.dtype))


def petrun_model(family: str, seed: int = 0, **changes):
    from petrun.models.registry import build_base_model

    net = build_base_model(model_section(family, **changes), device_target="CPU")
    randomize(net, seed)
    net.set_train(False)
    return net


def prompts(lengths=(5, 9), seed: int = 3) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    # ids >= 3 keep clear of pad 0, bos 1 and eos 2
    return [rng.integers(3, VOCAB, n).tolist() for n in lengths]


# ---------------------------------------------------------------------------------------------
# HF side (parity extra)


def hf_model(family: str):
    import torch
    import transformers

    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, max_position_embeddings=POSITIONS, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    if family == "llama2":
        cfg = transformers.LlamaConfig(intermediate_size=48, num_key_value_heads=2,
                                       rms_norm_eps=1e-5, rope_theta=500.0,
                                       tie_word_embeddings=False, **common)
        model = transformers.LlamaForCausalLM(cfg)
    elif family == "glm2":
        cfg = transformers.GlmConfig(intermediate_size=40, num_key_value_heads=2, head_dim=8,
                                     partial_rotary_factor=0.5, attention_bias=True,
                                     rms_norm_eps=1e-5, rope_theta=500.0,
                                     tie_word_embeddings=False, **common)
        model = transformers.GlmForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS,
                                      n_head=HEADS, n_positions=POSITIONS,
                                      activation_function="gelu_new", layer_norm_epsilon=1e-5,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                      attn_implementation="eager")
        model = transformers.GPT2LMHeadModel(cfg)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            value = torch.randn(p.shape, generator=gen) * 0.2
            if ("norm" in name or name.split(".")[-2].startswith("ln")) and name.endswith("weight"):
                value += 1.0
            p.copy_(value)
    return model.eval()


def hf_pair(family: str, tmp: Path):
    """(HF model, petrun model with the converted weights loaded strictly)."""
    from petrun.ckpt.hf import convert_hf_to_ms
    from petrun.models.registry import build_base_model
    from petrun.api import load_checkpoint

    model = hf_model(family)
    model.save_pretrained(str(tmp / "hf"), safe_serialization=True)
    convert_hf_to_ms(family, tmp / "hf", tmp / "model.ckpt")
    net = build_base_model(model_section(family), device_target="CPU")
    result = load_checkpoint(net, tmp / "model.ckpt", strict=True)
    assert result["loaded"] and not result["missing"]
    net.set_train(False)
    return model, net


def hf_greedy(model, prompt_rows: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """HF generate(do_sample=False) on left-padded rows; eos disabled so every row runs the
    full length. Returns the new tokens per row."""
    import torch

    width = max(len(p) for p in prompt_rows)
    ids = torch.zeros((len(prompt_rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompt_rows):
        ids[b, width - len(p):] = torch.tensor(p)
        mask[b, width - len(p):] = 1
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                             eos_token_id=None, pad_token_id=0, use_cache=True)
    return out[:, width:].tolist()
