"""Parameter-efficient finetuning: `apply_pet(net, pet_config)` is the one entry point.

No MindSpore import here: the CLI imports this package to validate configs without paying for
MindSpore. Each method is "module:function", imported only when that method is applied.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Mapping

from petrun.errors import UserError
from petrun.pet.config import PET_CONFIGS, PetConfigBase

KEY = "model.model_config.pet_config"

# pet_type -> "module:function"; the function is apply(net, config) -> PetReport.
METHODS: dict[str, str] = {
    "lora": "petrun.pet.lora:apply",
}


def resolve_method(pet_type: str):
    module, func = METHODS[pet_type].split(":")
    return getattr(importlib.import_module(module), func)


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
    """Inject the configured method into `net` in place, freeze the rest; returns its PetReport."""
    cfg = parse_pet_config(pet_config)
    if cfg.pet_type not in METHODS:
        built = ", ".join(sorted(METHODS))
        raise UserError(f"pet_type {cfg.pet_type!r} is not built yet (built: {built})",
                        key=f"{KEY}.pet_type", fix=f"use one of: {built}")
    return resolve_method(cfg.pet_type)(net, cfg)


__all__ = ["METHODS", "apply_pet", "parse_pet_config", "resolve_method"]
