"""Route a resolved config to the library entry point for its verb."""
from __future__ import annotations

from petrun.errors import UserError


def run_job(cfg, verb: str, console) -> None:
    raise UserError(f"`petrun {verb}` is not built yet in this version",
                    fix="use `petrun config show` / `petrun config validate` for now")
