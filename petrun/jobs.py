"""Route a resolved config to the recipe for its verb: the one entry the CLI and the Trainer share."""
from __future__ import annotations

from petrun.errors import UserError


def run_job(cfg, verb: str, console, preflight: bool = True, options: dict | None = None) -> dict:
    """options: the verb-only options (predict/eval/chat: declared in petrun.cli.infer_cmd, taken
    by petrun.infer.recipe and petrun.infer.chat_recipe)."""
    if preflight:  # seconds-fast checks before anything heavy is imported or built
        from petrun.preflight import run_preflight
        # chat runs predict's checks: the same model, weights and tokenizer, no dataset.
        report = run_preflight(cfg, "predict" if verb == "chat" else verb,
                               adapter=(options or {}).get("adapter"))
        console.print(report.line(), style="dim", markup=False, highlight=False)
    if verb in ("finetune", "train"):
        from petrun.train.recipe import FinetuneRecipe
        return FinetuneRecipe(cfg, console=console).run()
    if verb == "predict":
        from petrun.infer.recipe import run_predict
        return run_predict(cfg, console, **(options or {}))
    if verb == "chat":
        from petrun.infer.chat_recipe import run_chat
        return run_chat(cfg, console, **(options or {}))
    if verb == "eval":
        from petrun.infer.recipe import run_eval
        return run_eval(cfg, console, **(options or {}))
    raise UserError(f"`petrun {verb}` is not built yet in this version",
                    fix="finetune/train work now; eval and predict come with the inference release")
