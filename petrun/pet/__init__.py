"""Parameter-efficient finetuning: `apply_pet(net, pet_config)` is the one entry point.

No MindSpore import here: the CLI imports this package to validate configs without paying for
MindSpore. Each method is "module:function", imported only when that method is applied.
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping

from petrun.errors import UserError
from petrun.pet.config import METHODS, PET_CONFIGS, PetConfigBase, resolve

KEY = "model.model_config.pet_config"


def resolve_method(pet_type: str):
    """The registered apply(net, config) -> PetReport of `pet_type` (petrun/pet/config.py)."""
    return resolve(METHODS[pet_type])


def parse_pet_config(pet_config: Mapping[str, Any] | PetConfigBase) -> PetConfigBase:
    """A validated config dataclass for `pet_config`, or a UserError naming the offending key."""
    if isinstance(pet_config, PetConfigBase):
        cfg, given = pet_config, set()
    elif isinstance(pet_config, Mapping):
        given = set(pet_config)
        pet_type = pet_config.get("pet_type")
        if pet_type not in PET_CONFIGS:
            known = ", ".join(sorted(PET_CONFIGS))
            close = difflib.get_close_matches(str(pet_type), PET_CONFIGS, n=1)
            raise UserError(f"unknown pet_type {pet_type!r}; known types: {known}",
                            key=f"{KEY}.pet_type",
                            fix=f"did you mean {close[0]!r}?" if close else f"use one of: {known}")
        cfg_cls = PET_CONFIGS[pet_type]
        unknown = sorted(given - cfg_cls.field_names())
        if unknown:
            close = difflib.get_close_matches(unknown[0], cfg_cls.field_names(), n=1)
            raise UserError(f"unknown key {unknown[0]!r} for pet_type {pet_type!r}",
                            key=f"{KEY}.{unknown[0]}",
                            fix=f"did you mean {close[0]!r}?" if close else
                            f"valid keys: {', '.join(sorted(cfg_cls.field_names()))}")
        cfg = cfg_cls.from_dict(pet_config)
    else:
        raise UserError(f"must be a mapping with a pet_type, got {type(pet_config).__name__}",
                        key=KEY,
                        fix="e.g. pet_config: {pet_type: lora, target_modules: '.*wq|.*wv'}")
    if cfg.pet_type not in PET_CONFIGS or not isinstance(cfg, PET_CONFIGS[cfg.pet_type]):
        raise UserError(f"unknown pet_type {cfg.pet_type!r}; known types: "
                        f"{', '.join(sorted(PET_CONFIGS))}", key=f"{KEY}.pet_type")
    for key, message in cfg.check():
        raise UserError(message, key=f"{KEY}.{key}")
    return cfg


def apply_pet(net, pet_config: Mapping[str, Any] | PetConfigBase):
    """Apply the configured method to `net` and freeze the rest; returns its PetReport.

    Layer methods (lora, ia3, adapter) change `net` in place; prompt-learning methods (ptuning2,
    prefixtuning, prompt_tuning, ptuning) wrap it. Either way `report.model` is the network to
    train and save.
    """
    cfg = parse_pet_config(pet_config)
    if cfg.pet_type not in METHODS:
        built = ", ".join(sorted(METHODS))
        raise UserError(f"pet_type {cfg.pet_type!r} is not built yet (built: {built})",
                        key=f"{KEY}.pet_type", fix=f"use one of: {built}")
    report = resolve_method(cfg.pet_type)(net, cfg)
    if report.model is None:
        report.model = net
    return report


def check_model_pet(arch: str | None, model_config: Mapping[str, Any] | None, pet_config) -> None:
    """Cross-checks between model and pet_config that neither section can make alone.

    MindFormers' ChatGLM2WithPtuning2 is ChatGLM2 + P-Tuning v2: petrun builds it as exactly that,
    so it needs a ptuning2 pet_config; a model_config.pre_seq_len (which MindFormers' GLM2 uses to
    size its caches) must agree with pet_config.pre_seq_len.
    """
    pet_type = pet_config.get("pet_type") if isinstance(pet_config, Mapping) else \
        getattr(pet_config, "pet_type", None)
    if arch == "ChatGLM2WithPtuning2" and pet_type != "ptuning2":
        raise UserError("model.arch.type ChatGLM2WithPtuning2 is ChatGLM2 with P-Tuning v2, but "
                        + ("there is no pet_config" if pet_type is None else
                           f"pet_config.pet_type is {pet_type!r}"),
                        key=f"{KEY}.pet_type",
                        fix="add pet_config: {pet_type: ptuning2, pre_seq_len: 128, "
                            "prefix_projection: False, projection_dim: 128, dropout_prob: 0.0}, "
                            "or use arch ChatGLM2ForConditionalGeneration for other methods")
    model_len = model_config.get("pre_seq_len") if isinstance(model_config, Mapping) else \
        getattr(model_config, "pre_seq_len", None)
    if model_len in (None, "None") or pet_type != "ptuning2":
        return
    pet_len = pet_config.get("pre_seq_len", PET_CONFIGS["ptuning2"].pre_seq_len) \
        if isinstance(pet_config, Mapping) else pet_config.pre_seq_len
    if model_len != pet_len:
        raise UserError(f"model_config.pre_seq_len is {model_len} but pet_config.pre_seq_len is "
                        f"{pet_len}", key="model.model_config.pre_seq_len",
                        fix=f"make them equal (or drop model_config.pre_seq_len; petrun sizes the "
                            f"prefix from pet_config)")


def after_load(model, result: Mapping[str, Any]) -> None:
    """What a method must do once weights are loaded (prompt tuning starts from the vocabulary
    that the base checkpoint brings)."""
    if getattr(model, "pet_type", None) == "prompt_tuning":
        from petrun.pet.prompt import after_load as prompt_after_load
        prompt_after_load(model, list(result.get("loaded", [])))


__all__ = ["METHODS", "after_load", "apply_pet", "check_model_pet", "parse_pet_config",
           "resolve_method"]
