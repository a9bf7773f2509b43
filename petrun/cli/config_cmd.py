"""`petrun config show|validate`: resolve a YAML file and print or check it (no MindSpore)."""
from __future__ import annotations

import typer

from petrun.cli.common import OVERRIDE_CONTEXT, console, err_console
from petrun.config import load_config
from petrun.config.overrides import parse_args

app = typer.Typer(help="Resolve, print and check configs (base_config chains, overrides).",
                  no_args_is_help=True)


@app.command("show", context_settings=OVERRIDE_CONTEXT)
def show(ctx: typer.Context,
         config: str = typer.Option(..., "--config", "-c", help="YAML file (MindFormers schema)."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML.")):
    """Print the fully resolved config: base_config merged, overrides applied, validated.

    Extra words are overrides: a.b.c=value, ~a.b to delete, or MindFormers flags (--seed 1).
    """
    cfg = load_config(config, parse_args(ctx.args))
    if as_json:
        print(cfg.to_json())
        err_console.print(f"[dim]resolved from {cfg.source}[/dim]", highlight=False)
        if cfg.ignored:
            err_console.print(f"[dim]ignored by petrun: {', '.join(cfg.ignored)}[/dim]")
        return
    print(f"# Resolved from {cfg.source}")   # a shipped config when no local file had the name
    if cfg.ignored:
        print("# Accepted for MindFormers compatibility but ignored by petrun:")
        for key in cfg.ignored:
            print(f"#   {key}")
    print(cfg.to_yaml(), end="")


@app.command("validate", context_settings=OVERRIDE_CONTEXT)
def validate(ctx: typer.Context,
             config: str = typer.Option(..., "--config", "-c", help="YAML file to check.")):
    """Check a config strictly and run every pre-flight check of the run it describes (its
    run_mode): unknown keys, types, impossible values, the model and PET method it builds
    (target_modules included), run settings; exit 2 on problems. Memory is left to `petrun plan`
    (it depends on the machine that runs it); a path missing on this machine is a warning, an
    existing checkpoint or dataset is checked as the run would. Overrides (a.b=1) may follow."""
    import time

    from petrun.preflight import PreflightError, config_findings, config_verb
    t0 = time.perf_counter()
    cfg = load_config(config, parse_args(ctx.args))
    findings, warnings = config_findings(cfg)
    if findings:
        raise PreflightError(findings, time.perf_counter() - t0,
                             head=f"{config}: well-formed, but `petrun {config_verb(cfg)}` would "
                                  "refuse it:")
    console.print(f"[green]ok[/green] {cfg.source}: valid"
                  + (f" ({len(cfg.ignored)} MindFormers keys ignored)" if cfg.ignored else ""))
    for warning in warnings:
        console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False)
