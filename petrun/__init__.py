"""petrun: parameter-efficient finetuning of LLMs on MindSpore from MindFormers-style YAML.

Importing petrun does not import MindSpore; the API functions import it when called.
"""
from __future__ import annotations

from petrun.version import __version__

from petrun.config import Config, load_config  # noqa: E402  (pure python)
from petrun.errors import UserError  # noqa: E402

_API = ("build_model", "load_checkpoint", "logits", "Trainer")


def __getattr__(name: str):
    # Resolved on first use so `import petrun` (and the CLI's --help) stays light.
    if name in _API:
        from petrun import api
        return getattr(api, name)
    raise AttributeError(f"module 'petrun' has no attribute {name!r}")


__all__ = ["__version__", "Config", "load_config", "UserError", *_API]
