"""`petrun export`: a model (base + adapter, or a full finetune) → a folder transformers loads
(the work is in petrun.ckpt.export)."""
from __future__ import annotations

from typing import Optional

import typer

from petrun.cli.common import TensorProgress, console


def export(
        config: str = typer.Option(..., "--config", "-c", help="The YAML the model was trained with (model, pet_config, tokenizer)."),
        output: str = typer.Option(..., "--output", "-o", help="Folder to write (created; replaced only with --overwrite)."),
        adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter .ckpt, or a run's checkpoint/rank_N/ folder (as predict --adapter)."),
        checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Weights .ckpt: the base (default: the config's load_checkpoint), or a full finetune's checkpoint without --adapter."),
        fmt: str = typer.Option("hf", "--format", help="hf: merged weights + config + tokenizer; peft: the adapter in PEFT's format with the base's config.json."),
        max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest model-*.safetensors shard, as transformers' save_pretrained (5GB, 500MB, 2GiB)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32, fp16 or bf16 (default: keep the checkpoint's dtypes)."),
        tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer file or folder, when the config names none (tokenizer.model, tokenizer.json, vocab.json)."),
        base_model: Optional[str] = typer.Option(None, "--base-model", help="--format peft: base_model_name_or_path to record (e.g. the --format hf export of the base)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --output."),
):
    """Write a folder AutoModelForCausalLM and AutoTokenizer load as it is.

    petrun export --config configs/llama2/lora_llama2_tiny.yaml
    --adapter output/checkpoint/rank_0 --output llama2_tiny_hf/

    petrun export --config configs/llama2/lora_llama2_tiny.yaml
    --adapter output/checkpoint/rank_0 --output llama2_tiny_peft/ --format peft

    The folder is written beside --output and renamed into place when complete.
    """
    from petrun.ckpt.export import export_model

    with TensorProgress("exporting") as bar:
        result = export_model(config, output, adapter=adapter, checkpoint=checkpoint, fmt=fmt,
                              max_shard_size=max_shard_size, dtype=dtype, tokenizer=tokenizer,
                              overwrite=overwrite, base_model=base_model, progress=bar.step,
                              on_plan=bar.on_plan)
    what = (f"{result.tensors} tensors in {result.shards} file(s)"
            + (f", {result.merged_layers} with the {result.pet_type} adapter folded in"
               if result.pet_type else "")) if result.format == "hf" else \
        f"a {result.pet_type} adapter, {result.tensors} tensors"
    console.print(f"[green]wrote[/green] {result.output} — {what}", highlight=False,
                  soft_wrap=True)
    console.print(f"files: {', '.join(result.files)}", highlight=False, soft_wrap=True)
    if result.template:
        console.print(f"chat template: petrun's {result.template!r} (tokenizer.apply_chat_template)",
                      highlight=False)
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    if result.format == "hf":
        console.print(f"next: AutoModelForCausalLM.from_pretrained(\"{result.output}\"), "
                      f"AutoTokenizer.from_pretrained(\"{result.output}\")", highlight=False,
                      soft_wrap=True)
    else:
        console.print(f"next: PeftModel.from_pretrained(base_model, \"{result.output}\") on the "
                      "--format hf export of the base weights", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
