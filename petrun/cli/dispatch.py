"""Route a resolved config to the library entry point for its verb."""
from __future__ import annotations

from petrun.errors import UserError


def run_job(cfg, verb: str, console) -> dict:
    if verb in ("finetune", "train"):
        from petrun.train.recipe import FinetuneRecipe
        return FinetuneRecipe(cfg, console=console).run()
    raise UserError(f"`petrun {verb}` is not built yet in this version",
                    fix="finetune/train work now; eval and predict come with the inference release")
