"""petrun's command line. Each verb group lives in its own small module; no logic here."""
from __future__ import annotations

import os
import sys

import typer

from petrun.version import __version__
from petrun.cli import ckpt_cmd, config_cmd, plan_cmd, run

app = typer.Typer(
    name="petrun", no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
    help="Parameter-efficient finetuning of LLMs on MindSpore, driven by MindFormers-style YAML.\n\n"
         "Add --debug anywhere to see full tracebacks.",
)


def _version(value: bool):
    if value:
        print(f"petrun {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    pass


app.add_typer(config_cmd.app, name="config")
from petrun.cli import configs_cmd  # noqa: E402  (shipped configs: list, copy)
app.add_typer(configs_cmd.app, name="configs")
from petrun.cli import plot_cmd  # noqa: E402  (issue 18: plots of runs)
plot_cmd.register(app)
app.add_typer(ckpt_cmd.app, name="ckpt")
run.register(app)
from petrun.cli import ckpt_transform_cmd, launch_cmd  # noqa: E402  (issue 7: launch, ckpt transform)
launch_cmd.register(app)
ckpt_transform_cmd.register(ckpt_cmd.app)
plan_cmd.register(app)
from petrun.cli import pet_cmd  # noqa: E402  (issue 5: ckpt merge, export-peft, import-peft)
pet_cmd.register(ckpt_cmd.app)
from petrun.cli import data_cmd  # noqa: E402  (issue 6: data prepare, train-tokenizer)
app.add_typer(data_cmd.app, name="data")
from petrun.cli import models_cmd  # noqa: E402  (issue 14: the local model store)
app.add_typer(models_cmd.app, name="models")
from petrun.cli import run_cmd  # noqa: E402  (issue 14: run_mindformer.py's entry)
run_cmd.register(app)
from petrun.cli import export_cmd  # noqa: E402  (issue 19: export to a transformers folder)
export_cmd.register(app)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    # MindSpore logs warnings (deprecations, "parameters not loaded" that petrun checks itself)
    # to stderr; keep runs readable unless asked. GLOG_v must be set before MindSpore is imported.
    os.environ.setdefault("GLOG_v", "2" if debug else "3")
    from petrun.errors import UserError
    try:
        rc = app(args=argv, prog_name="petrun", standalone_mode=False)
        # typer's vendored click returns (not raises) its exit code for Ctrl-C in this mode
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except UserError as e:
        _report(e, debug)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        # Usage errors from typer's (possibly vendored) click know how to print themselves and
        # carry exit code 2; anything else is a petrun bug and keeps its traceback.
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            sys.exit(e.exit_code)
        raise


def _report(e, debug: bool) -> None:
    from rich.markup import escape

    from petrun.cli.common import err_console
    if debug:
        import traceback
        traceback.print_exception(e)
    err_console.print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False, soft_wrap=True)
    if not debug:
        err_console.print("[dim](run with --debug for the traceback)[/dim]", highlight=False)
