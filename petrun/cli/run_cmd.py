"""`petrun run`: run_mindformer.py's entry. `petrun run --config C --run_mode M …` runs
`petrun M --config C …` with the same words, so every flag means what it means on the verb.

scripts/msrun_launcher.sh and `petrun launch` map a "run_mindformer.py …" command here, which is
how the MindFormers launcher line of the user documents runs unchanged. The run mode rules
(which mode when none is given, what each verb accepts) are in petrun.cli.run_mode.
"""
from __future__ import annotations

from typing import Optional

import typer

from petrun.cli.common import OVERRIDE_CONTEXT


def _last_run_mode_override(words: list[str]) -> str | None:
    """The value of the last `run_mode=X` among the override words (bare or inside
    --options), which the verb will apply after --run_mode; None if there is none."""
    found = None
    for word in words:
        if word.startswith("run_mode="):
            found = word.partition("=")[2]
        elif word.startswith("--options=run_mode="):
            found = word.partition("=")[2].partition("=")[2]
    return found


def _config_run_mode(config: str):
    from petrun.config.load import load_layered
    data, _ = load_layered(config)
    return data.get("run_mode")


def run(ctx: typer.Context,
        config: str = typer.Option(..., "--config", "-c", help="YAML file (MindFormers schema)."),
        run_mode: Optional[str] = typer.Option(
            None, "--run_mode",
            help="train|finetune|eval|predict (default: the config's run_mode key)."),
        ):
    """Run the verb that the run mode names (run_mindformer.py's command line).

    petrun run --config configs/llama2/lora_llama2_tiny.yaml --run_mode finetune --use_parallel False

    The run mode is the last of --run_mode, run_mode=X and --options run_mode=X, else the
    config's run_mode key. Every other word goes to that verb: its options (see `petrun finetune
    --help`, `petrun predict --help`), run_mindformer.py's flags and overrides.
    """
    from petrun.cli import run_mode as modes
    from petrun.errors import UserError

    words = list(ctx.args)
    mode, key, source = _last_run_mode_override(words), "run_mode", None
    if mode is None and run_mode is not None:
        mode, key = run_mode, "--run_mode"
    if mode is None:
        mode, key, source = _config_run_mode(config), "run_mode", config
        if mode is None:
            raise UserError("no run mode: neither --run_mode nor the config's run_mode key is set "
                            "(MindFormers stops here too)", key="run_mode", file=config,
                            fix="add --run_mode finetune (or train, eval, predict)")
    verb = modes.check_value(mode, key, source)
    argv = [verb, "--config", config, *(["--run_mode", run_mode] if run_mode else []), *words]
    app = _APP[0]   # the root app register() was given (importing cli.main here would be a circle)
    # Nested call: errors (UserError, SystemExit) reach petrun's main() as the verb's own would.
    rc = app(args=argv, prog_name="petrun", standalone_mode=False)
    if isinstance(rc, int) and rc:
        raise SystemExit(rc)


_APP: list[typer.Typer] = []


def register(app: typer.Typer) -> None:
    _APP[:] = [app]
    app.command("run", context_settings=OVERRIDE_CONTEXT)(run)
