"""The model-family registry: MindFormers `model.arch.type` → everything petrun asks about it.

An entry names the config class, the builder, the family (llama2/glm2/gpt2: the key of the
family's HF name map in ckpt/hf.py, its shard layout in parallel/strategy.py and its parameter
shapes in models/shapes.py), the chat template its finetune data uses, and the planner's default
LoRA targets. What PET needs from a built model (the word embedding, more positions for virtual
tokens) the model classes expose themselves (`word_embedding`, `extend_positions`), so PET never
switches on a model's class. Builders are "module:attr" strings imported on use, so reading this
module (config validation, `petrun config show`) never imports MindSpore. A new family is one
model module plus one `register_arch` call per arch name (ARCHITECTURE.md has the checklist).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping

from petrun.errors import UserError
from petrun.models.configs import MODEL_CONFIGS, ModelConfigBase


@dataclass(frozen=True)
class ArchEntry:
    arch: str          # model.arch.type, e.g. "LlamaForCausalLM"
    config_type: str   # model.model_config.type it pairs with, e.g. "LlamaConfig"
    builder: str       # "package.module:Callable" taking (config, device_target=...)
    # Tokens per training sample beyond seq_length: 1 when the model shifts labels itself
    # (Llama2, GPT2 data are seq_length + 1 long), 0 when the data arrives shifted (GLM2).
    extra_tokens: int = 1
    family: str = ""   # llama2 | glm2 | gpt2
    # The prompt template of the family's finetune data in MindFormers' recipes (infer/chat.py).
    chat_template: str = "none"
    # LoRA target_modules the planner's "LoRA instead of a full finetune" lever proposes.
    lora_targets: str | None = None


_ARCHS: dict[str, ArchEntry] = {}


def register_arch(arch: str, config_type: str, builder: str, *, family: str,
                  extra_tokens: int = 1, chat_template: str = "none",
                  lora_targets: str | None = None) -> None:
    _ARCHS[arch] = ArchEntry(arch, config_type, builder, extra_tokens, family, chat_template,
                             lora_targets)


register_arch("LlamaForCausalLM", "LlamaConfig", "petrun.models.llama:LlamaForCausalLM",
              family="llama2", chat_template="alpaca", lora_targets=".*wq|.*wk|.*wv|.*wo")
register_arch("ChatGLM2ForConditionalGeneration", "ChatGLM2Config",
              "petrun.models.glm2:ChatGLM2ForConditionalGeneration", family="glm2",
              extra_tokens=0, chat_template="glm2", lora_targets=".*query_key_value")
# MindFormers names GLM2's P-Tuning v2 model as an arch of its own; petrun builds the same base
# model and leaves the prefix to pet_config (pet_type: ptuning2).
register_arch("ChatGLM2WithPtuning2", "ChatGLM2Config",
              "petrun.models.glm2:ChatGLM2ForConditionalGeneration", family="glm2",
              extra_tokens=0, chat_template="glm2")
register_arch("GPT2LMHeadModel", "GPT2Config", "petrun.models.gpt2:GPT2LMHeadModel",
              family="gpt2", lora_targets=".*dense1|.*dense3")   # MindFormers' GPT2WithLora


def family_of_arch(arch: str | None) -> str | None:
    """llama2 / glm2 / gpt2 for a known model.arch.type, else None."""
    entry = _ARCHS.get(arch)  # type: ignore[arg-type]
    return entry.family if entry else None


def arch_families() -> dict[str, str]:
    """{model.arch.type: family} of every registered arch."""
    return {a: e.family for a, e in _ARCHS.items()}


def known_archs() -> list[str]:
    return sorted(_ARCHS)


def arch_entry(arch: str) -> ArchEntry:
    """The registry entry for `arch`; a UserError naming model.arch.type if unknown."""
    entry = _ARCHS.get(arch)
    if entry is None:
        raise UserError(
            f"unknown model architecture {arch!r}; known: {_describe()}", key="model.arch.type",
            fix="set model.arch.type to one of the known names")
    return entry


def embedding_rows(model_cfg: ModelConfigBase) -> int:
    """Token ids the model can embed (GLM2: padded_vocab_size)."""
    return int(getattr(model_cfg, "vocab", None) or model_cfg.vocab_size)


def build_config(model_section: Mapping[str, Any]) -> ModelConfigBase:
    """The typed model config for a `model:` section ({"arch": {"type"}, "model_config": {...}})."""
    arch = _get(_get(model_section, "arch", {}) or {}, "type", None)
    entry = arch_entry(arch)
    raw = _get(model_section, "model_config", {}) or {}
    if isinstance(raw, ModelConfigBase):
        config_type = raw.type
    else:
        config_type = _get(raw, "type", None) or entry.config_type
    if config_type != entry.config_type:
        raise UserError(
            f"model.model_config.type {config_type!r} does not match arch {arch!r}, which needs "
            f"{entry.config_type!r}; known pairs: {_describe()}", key="model.arch.type",
            fix="make model.arch.type and model.model_config.type a known pair")
    if isinstance(raw, ModelConfigBase):
        return raw
    return MODEL_CONFIGS[entry.config_type].from_dict(dict(raw))


def build_base_model(model_section: Mapping[str, Any], device_target: str | None = None):
    """Instantiate the MindSpore Cell for a `model:` section; imports the family lazily."""
    entry = arch_entry(_get(_get(model_section, "arch", {}) or {}, "type", None))
    config = build_config(model_section)
    module_name, attr = entry.builder.split(":")
    builder = getattr(importlib.import_module(module_name), attr)
    return builder(config, device_target=device_target)


def _get(section: Any, key: str, default: Any) -> Any:
    # Sections may be plain dicts, OmegaConf DictConfigs or attribute objects.
    if isinstance(section, Mapping):
        return section.get(key, default)
    return getattr(section, key, default)


def _describe() -> str:
    return ", ".join(f"{e.arch} (model_config.type {e.config_type})"
                     for e in sorted(_ARCHS.values(), key=lambda e: e.arch))
