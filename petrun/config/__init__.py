"""Resolve a YAML file plus overrides into one validated Config (no MindSpore import)."""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from petrun.config.load import load_layered
from petrun.config.overrides import Override, apply_overrides, parse_args
from petrun.errors import UserError

_MISSING = object()


@dataclass
class Config:
    """The resolved config: plain nested dicts plus where each key came from."""
    data: dict
    source: str
    origins: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return default
        return node

    def origin(self, dotted: str) -> str:
        from petrun.config.schema import _origin
        return _origin(self.origins, dotted) or self.source

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False, allow_unicode=True, default_flow_style=None)

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, ensure_ascii=False)

    def hash(self) -> str:
        """Stable content hash, stored with checkpoints to tie them to the config that made them."""
        return hashlib.sha256(json.dumps(self.data, sort_keys=True).encode()).hexdigest()[:16]

    def view(self):
        """Attribute access (cfg.model.model_config.hidden_size) via OmegaConf."""
        from omegaconf import OmegaConf
        return OmegaConf.create(copy.deepcopy(self.data))


def _relink_dataset_tasks(data: dict) -> None:
    # MindFormers re-points *_dataset_task.dataset_config at *_dataset after overrides, so a
    # --train_dataset_dir override reaches the task that actually builds the data (§1.12).
    for name in ("train", "eval"):
        task = data.get(f"{name}_dataset_task")
        if isinstance(task, dict) and "dataset_config" in task and f"{name}_dataset" in data:
            task["dataset_config"] = copy.deepcopy(data[f"{name}_dataset"])


def load_config(path: str | Path, overrides: Iterable[str | Override] = (), *,
                validate: bool = True) -> Config:
    """Load `path` (following base_config), apply overrides, validate strictly.

    `overrides` may be strings as typed on the command line (`a.b=1`, `~a.b`, `--seed 3`) or
    Override objects. Raises UserError (ConfigError) naming file, dotted key and a fix.
    """
    from petrun.config.shipped import resolve_config_path
    path = resolve_config_path(path)   # a local file, else a shipped config of that name
    data, origins = load_layered(path)
    return _resolve(data, origins, str(path), overrides, validate)


def with_overrides(cfg: Config, overrides: Iterable[str | Override]) -> Config:
    """`cfg` with more overrides applied and validated again; `cfg` itself is left as it was."""
    return _resolve(copy.deepcopy(cfg.data), dict(cfg.origins), cfg.source, overrides, True)


def _resolve(data: dict, origins: dict[str, str], source: str,
             overrides: Iterable[str | Override], validate: bool) -> Config:
    overrides = list(overrides)
    words = [o for o in overrides if isinstance(o, str)]
    parsed = [o for o in overrides if isinstance(o, Override)] + parse_args(words)
    apply_overrides(data, origins, parsed)
    _relink_dataset_tasks(data)
    cfg = Config(data=data, source=source, origins=origins)
    if validate:
        from petrun.config.schema import ConfigError, canonicalize, validate as run_schema
        result = run_schema(data, origins)
        canonicalize(data)
        if result.problems:
            raise ConfigError(result.problems, file=source)
        cfg.ignored = result.ignored
    return cfg


__all__ = ["Config", "load_config", "with_overrides", "UserError"]
