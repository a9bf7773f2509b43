"""Why a checkpoint does not fit a model, in the user's terms: Hugging Face names, another model
family, another PET method, other pet_config values, or another model size.

Pre-flight (names and shapes from the file's index) and ckpt.load.load_into (the loaded file) both
ask here, so a mismatch gets the same advice before and after the model is built. Pure Python.
"""
from __future__ import annotations

from typing import Iterable, Sequence

DELTA = "mindpet_delta_"   # MindFormers' infix of every PET parameter

# (family, arch, name prefixes of MindFormers-layout checkpoints)
FAMILIES = (("Llama2", "LlamaForCausalLM", ("model.layers.", "model.tok_embeddings.")),
            ("ChatGLM2", "ChatGLM2ForConditionalGeneration",
             ("transformer.encoder.layers.", "transformer.embedding.")),
            ("GPT2", "GPT2LMHeadModel", ("backbone.blocks.", "backbone.embedding.")))
# Fragments only Hugging Face checkpoints have (Llama's self_attn/gate_proj, GPT-2's h.N.attn).
HF_FRAGMENTS = (".self_attn.", ".mlp.gate_proj.", ".attn.c_attn.", "transformer.h.",
                ".embed_tokens.")


def _method_names() -> dict[str, str]:
    """{parameter tag: the method's title}, from the PET-method registry."""
    from petrun.pet.config import methods
    return {tag: m.title for m in methods() for tag in m.tags}

SIZE_FIX = ("the checkpoint is from another model size; match model.model_config (hidden_size, "
            "num_layers, vocab_size, n_kv_heads) to the checkpoint")
NAMES_FIX = ("check that the checkpoint is for this model family and size (MindFormers names such "
             "as model.layers.0.attention.wq.weight)")


def family_of(names: Iterable[str]) -> str | None:
    """The family whose MindFormers name prefixes most of `names` carry, if any."""
    counts = {fam: 0 for fam, _, _ in FAMILIES}
    for n in names:
        for fam, _, prefixes in FAMILIES:
            if n.startswith(prefixes):
                counts[fam] += 1
    best = max(counts, key=counts.get)
    return best if counts[best] else None


def methods_of(names: Iterable[str]) -> set[str]:
    """PET methods whose parameters appear in `names` ('lora', 'ia3', ...)."""
    out = set()
    for n in names:
        if DELTA in n:
            out.add(n.split(DELTA, 1)[1].split("_", 1)[0].split(".", 1)[0])
    return out


def _methods(found: set[str]) -> str:
    return "/".join(sorted(_method_names().get(m, m) for m in found))


def mismatch_message(missing: Sequence[str], unexpected: Sequence[str], examples: int) -> str:
    """'checkpoint does not match the model: ...' with counts and a few names of each side."""
    lines = []
    if missing:
        lines.append(f"{len(missing)} model parameters are not in the checkpoint, e.g. "
                     + ", ".join(missing[:examples]))
    if unexpected:
        lines.append(f"{len(unexpected)} checkpoint entries match no model parameter, e.g. "
                     + ", ".join(unexpected[:examples]))
    return "checkpoint does not match the model: " + "; ".join(lines)


def names_fix(checkpoint: Sequence[str], model: Sequence[str]) -> str:
    """The fix for names that do not line up (missing or unexpected entries)."""
    if any(f in n for n in checkpoint for f in HF_FRAGMENTS):
        return ("these are Hugging Face names: convert the weights first with `petrun ckpt "
                "convert --src <HF folder> --dst model.ckpt --config <this config>`")
    ck_family, model_family = family_of(checkpoint), family_of(model)
    if ck_family and model_family and ck_family != model_family:
        arch = next(a for f, a, _ in FAMILIES if f == ck_family)
        return (f"this is a {ck_family} checkpoint but the config builds {model_family}: use a "
                f"config with model.arch.type {arch}, or a {model_family} checkpoint")
    ck_methods, model_methods = methods_of(checkpoint), methods_of(model)
    if ck_methods and model_methods and ck_methods != model_methods:
        return (f"the checkpoint holds {_methods(ck_methods)} weights but the config's "
                f"pet_config builds {_methods(model_methods)}: use the config the adapter was "
                "trained with (its pet_type and target_modules)")
    if ck_methods and not model_methods:
        return (f"the checkpoint holds {_methods(ck_methods)} weights but the config has no "
                "pet_config: use the config the adapter was trained with")
    if ck_methods and ck_methods == model_methods:
        return ("the adapter was trained on other layers: use the config it was trained with "
                "(model.model_config.pet_config.target_modules, num_layers)")
    return NAMES_FIX


def shapes_fix(bad: Sequence[tuple[str, tuple, tuple]]) -> str:
    """The fix for (name, checkpoint shape, model shape) mismatches."""
    if bad and all(DELTA in n for n, _, _ in bad):
        for name, got, want in bad:
            rank = _lora_rank(name, got)
            if rank is not None and rank != _lora_rank(name, want):
                return (f"the adapter was trained with lora_rank {rank} (this config: "
                        f"{_lora_rank(name, want)}): set model.model_config.pet_config."
                        f"lora_rank: {rank}, or use the config it was trained with")
        return ("the adapter was trained with other pet_config values (its shapes differ): use "
                "the config it was trained with")
    return SIZE_FIX


def _lora_rank(name: str, shape: tuple) -> int | None:
    # lora_a is [r, in], lora_b is [out, r]
    if f"{DELTA}lora_a" in name and len(shape) == 2:
        return int(shape[0])
    if f"{DELTA}lora_b" in name and len(shape) == 2:
        return int(shape[1])
    return None
