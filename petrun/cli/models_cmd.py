"""`petrun models add|list`: the local model store (petrun.store does the work)."""
from __future__ import annotations

from typing import Optional

import typer

from petrun.cli.common import TensorProgress, console

app = typer.Typer(help="The local model store: MindFormers model names (gpt2, llama2_7b, glm2_6b, "
                       "...) for Trainer(model=NAME), without any download.",
                  no_args_is_help=True)


@app.command("add")
def add(
        name: str = typer.Argument(..., help="Model name, e.g. gpt2, llama2_7b, glm2_6b."),
        src: str = typer.Option(..., "--from", help="Hugging Face folder (config.json + *.safetensors) or a MindSpore .ckpt."),
        config: Optional[str] = typer.Option(None, "--config", "-c", help="petrun YAML of the model (needed for a .ckpt; with a folder it replaces config.json's sizes)."),
        tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer file or folder (default: the one in the --from folder)."),
        family: Optional[str] = typer.Option(None, "--family", help="llama2, glm2 or gpt2 when config.json's model_type does not say."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32, fp16 or bf16 for converted weights (default: as stored)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an entry of that name."),
):
    """Add a model to the store: weights converted to MindFormers' names, tokenizer, model YAML.

    petrun models add gpt2 --from /models/gpt2-hf/

    petrun models add glm2_6b --from /models/chatglm2-6b/ --dtype fp16

    petrun models add llama2_7b --from llama2_7b.ckpt --config configs/llama2/lora_llama2_7b.yaml
    --tokenizer /models/llama2/tokenizer.model

    The store is ~/.cache/petrun/models (or $PETRUN_MODEL_STORE); an entry appears only once it
    is complete.
    """
    from petrun import store

    with TensorProgress() as bar:
        entry = store.add(name, src, config=config, tokenizer=tokenizer, family=family,
                          dtype=dtype, overwrite=overwrite, progress=bar.step,
                          on_plan=bar.on_plan)
    tok = ", ".join(entry.meta.get("tokenizer") or []) or "none (add one with --tokenizer)"
    console.print(f"[green]added[/green] {entry.name} ({entry.family}, "
                  f"{store.human_count(entry.params)} parameters) → {entry.path}\n"
                  f"  tokenizer: {tok}\n"
                  f"  use: Trainer(task='text_generation', model='{entry.name}', "
                  f"pet_method='lora', train_dataset=...)", highlight=False, soft_wrap=True)


@app.command("list")
def list_(json_out: bool = typer.Option(False, "--json", help="One JSON list on stdout.")):
    """The models in the store: name, family, size, path."""
    import json

    from petrun import store

    found = store.entries()
    if json_out:
        print(json.dumps([{"name": e.name, "family": e.family, "params": e.params,
                           "path": str(e.path)} for e in found]))
        return
    if not found:
        console.print(f"no models in {store.root()}; add one with: "
                      f"{store.add_command('NAME')}", highlight=False, soft_wrap=True)
        return
    from rich.table import Table
    table = Table(title=f"models in {store.root()}")
    for col in ("name", "family", "size", "path"):
        table.add_column(col, justify="right" if col == "size" else "left", overflow="fold")
    for e in found:
        table.add_row(e.name, e.family, store.human_count(e.params), str(e.path))
    console.print(table)


@app.command("show")
def show(name: str = typer.Argument(..., help="Model name in the store.")):
    """One model's entry: its folder, files and model YAML (exit 2, with the command that adds
    it, when the store does not have it)."""
    import json

    import yaml

    from petrun import store

    entry = store.get(name, key="NAME")
    console.print(f"{entry.name}: {entry.family}, {store.human_count(entry.params)} parameters, "
                  f"{entry.path}", highlight=False, soft_wrap=True)
    console.print(json.dumps(entry.meta, indent=2), markup=False, highlight=False)
    console.print(yaml.safe_dump(entry.model_yaml(), sort_keys=False), markup=False,
                  highlight=False)
