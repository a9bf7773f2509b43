"""Shared CLI plumbing: consoles, the config-loading options every verb takes."""
from __future__ import annotations

from typing import Optional

from rich.console import Console

from petrun.config.overrides import MF_FLAGS, Override, convert_flag, parse_args

console = Console()
err_console = Console(stderr=True)

# Context settings for verbs that accept free overrides after their options.
OVERRIDE_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


def collect_overrides(extra: list[str], flags: dict[str, Optional[str]]) -> list[Override]:
    """MindFormers flags given as options (in MF_FLAGS order) then free `key=value` words."""
    out = [convert_flag(name, value) for name, value in flags.items()
           if value is not None and name in MF_FLAGS]
    return out + parse_args(extra)
