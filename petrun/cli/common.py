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


class TensorProgress:
    """A bar over the tensors of a conversion: `on_plan(plan)` sizes it from plan.num_tensors,
    `step(name)` advances it and shows the tensor. Transient: only the final line stays."""

    def __init__(self, what: str = "converting"):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn)
        self.what = what
        self.task = None
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("[dim]{task.fields[name]}"),
                            console=console, transient=True)

    def __enter__(self) -> "TensorProgress":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def on_plan(self, plan) -> None:
        self.task = self.bar.add_task(self.what, total=plan.num_tensors, name="")

    def step(self, name: str) -> None:
        self.bar.update(self.task, advance=1, name=name)
