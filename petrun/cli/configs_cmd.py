"""`petrun configs list|copy`: the configs petrun ships, to discover and to start from."""
from __future__ import annotations

import shutil
from pathlib import Path

import typer

from petrun.cli.common import console
from petrun.errors import UserError

app = typer.Typer(help="The configs petrun ships: list them, copy one to edit. Any verb's "
                       "--config also takes a shipped config's name (a local file wins).",
                  no_args_is_help=True)


@app.command("list")
def list_configs():
    """Shipped configs by family, with what each runs. Use a name as --config NAME."""
    from petrun.config.shipped import shipped
    family = None
    for s in shipped():
        if s.family != family:
            family = s.family
            console.print(f"[bold]{family}[/bold]")
        tag = " (base, inherited by others)" if s.is_base else ""
        console.print(f"  {s.path.stem:<28} {s.summary}{tag}", highlight=False, soft_wrap=True)
    console.print("\nRun one: petrun finetune --config lora_llama2_tiny.yaml   "
                  "Edit one: petrun configs copy lora_llama2_tiny.yaml my.yaml", highlight=False)


@app.command("copy")
def copy_config(name: str = typer.Argument(..., help="A shipped config (see `petrun configs list`)."),
                dest: str = typer.Argument(..., help="File or folder to copy it to."),
                overwrite: bool = typer.Option(False, "--overwrite", help="Replace DEST if it exists.")):
    """Copy a shipped config (and the bases it inherits, beside it) to edit it.

    petrun configs copy lora_llama2_7b.yaml my_run.yaml
    """
    from petrun.config.shipped import find_shipped
    src = find_shipped(name)
    if src is None:
        raise UserError(f"no shipped config named {name!r}", key="NAME",
                        fix="pick a name from `petrun configs list`")
    target = Path(dest)
    if target.is_dir():
        target = target / src.path.name
    # The bases a config inherits (base_config, relative to it) go beside the copy, or it
    # would not load; petrun's shipped chains stay inside one family folder.
    files = [(src.path, target)] + [(b, target.parent / b.name) for b in _bases(src.path)]
    clash = [str(t) for _, t in files if t.exists()]
    if clash and not overwrite:
        raise UserError(f"{', '.join(clash)} already exist(s)", key="DEST",
                        fix="choose another DEST, or add --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    for s, t in files:
        shutil.copyfile(s, t)
    console.print(f"copied {src.name} to {target}"
                  + (f" (with its base {', '.join(t.name for _, t in files[1:])})" if files[1:] else "")
                  + f"\nNext: petrun config validate --config {target}", highlight=False)


def _bases(path: Path) -> list[Path]:
    import yaml
    out: list[Path] = []
    todo = [path]
    while todo:
        current = todo.pop()
        data = yaml.safe_load(current.read_text(encoding="utf-8")) or {}
        bases = data.get("base_config") or []
        for b in [bases] if isinstance(bases, str) else bases:
            p = (current.parent / b).resolve()
            if p not in out:
                out.append(p)
                todo.append(p)
    return out
