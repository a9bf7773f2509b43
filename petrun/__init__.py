"""petrun: parameter-efficient finetuning of LLMs on MindSpore from MindFormers-style YAML.

Importing petrun does not import MindSpore; the functions below import it when called.
"""
from __future__ import annotations

__version__ = "0.1.0"

from petrun.config import Config, load_config  # noqa: E402  (pure python)
from petrun.errors import UserError  # noqa: E402

__all__ = ["__version__", "Config", "load_config", "UserError"]
