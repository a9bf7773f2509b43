"""`petrun ckpt merge | export-peft | import-peft`: adapters as files (the work is in petrun.ckpt)."""
from __future__ import annotations

from typing import Optional

import typer

from petrun.cli.common import console


def merge(
        config: str = typer.Option(..., "--config", "-c", help="The YAML the adapter was trained with (its pet_config gives the scaling)."),
        base: str = typer.Option(..., "--base", help="Base weights .ckpt (MindFormers names)."),
        adapter: str = typer.Option(..., "--adapter", help="Adapter .ckpt, or a run's checkpoint/rank_N/ folder (as predict --adapter)."),
        dst: str = typer.Option(..., "--dst", help="Merged .ckpt to write."),
        probe: bool = typer.Option(True, "--probe/--no-probe", help="Compare merged and unmerged logits on a probe batch (builds the model twice, one at a time)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --dst (never one of the inputs)."),
):
    """Fold a LoRA or IA3 adapter into the base weights.

    petrun ckpt merge --config configs/llama2/lora_llama2_tiny.yaml --base base.ckpt
    --adapter output/checkpoint/rank_0/adapter.ckpt --dst merged.ckpt

    The result loads into the plain model (the same YAML without pet_config).
    """
    from petrun.ckpt.merge import merge_checkpoint

    with console.status("merging the adapter into the base weights"
                        + (" and comparing logits on a probe batch…" if probe else "…")):
        result = merge_checkpoint(config, base, adapter, dst, run_probe=probe, overwrite=overwrite)
    console.print(f"[green]wrote[/green] {result.dst} — {result.tensors} tensors, "
                  f"{result.merged_layers} with the {result.pet_type} adapter folded in",
                  highlight=False, soft_wrap=True)
    if result.max_abs_diff is not None:
        console.print(f"probe batch {result.probe_shape[0]}×{result.probe_shape[1]}: max |merged − "
                      f"unmerged| logit difference = {result.max_abs_diff:.3g}", highlight=False)
    console.print(f"next: petrun predict --config {config} ~model.model_config.pet_config "
                  f"--load_checkpoint {result.dst} --prompt \"...\"   (the plain model)",
                  highlight=False, soft_wrap=True)


def export_peft(
        config: str = typer.Option(..., "--config", "-c", help="The YAML the adapter was trained with."),
        adapter: str = typer.Option(..., "--adapter", help="Adapter .ckpt, or a run's checkpoint/rank_N/ folder (as predict --adapter)."),
        dst: str = typer.Option(..., "--dst", help="Folder for adapter_config.json + adapter_model.safetensors."),
        base_model: Optional[str] = typer.Option(None, "--base-model", help="base_model_name_or_path to record (e.g. the folder `petrun ckpt convert --reverse` wrote)."),
):
    """Write a petrun adapter in HF PEFT's format (LoRA, IA3, prompt tuning, P-tuning, prefix).

    petrun ckpt export-peft --config configs/llama2/lora_llama2_tiny.yaml
    --adapter output/checkpoint/rank_0/adapter.ckpt --dst peft_adapter/

    Load it with PeftModel.from_pretrained(hf_model, "peft_adapter/") on the transformers model
    converted from the same base weights.
    """
    from petrun.ckpt.peft_format import export_peft as run

    with console.status("writing the adapter in PEFT's format…"):
        result = run(config, adapter, dst, base_model)
    console.print(f"[green]wrote[/green] {result.dst} — {result.peft_type}, {result.tensors} "
                  "tensors (adapter_config.json + adapter_model.safetensors)", highlight=False,
                  soft_wrap=True)
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    console.print(f"next: PeftModel.from_pretrained(model, \"{result.dst}\") on the transformers "
                  "model of the same base weights (petrun ckpt convert --reverse writes one)",
                  highlight=False, soft_wrap=True)


def import_peft(
        config: str = typer.Option(..., "--config", "-c", help="The petrun YAML whose model will load the adapter."),
        src: str = typer.Option(..., "--src", help="Folder PEFT's save_pretrained wrote."),
        dst: str = typer.Option(..., "--dst", help="Adapter .ckpt to write."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --dst."),
):
    """Convert an HF PEFT adapter into a petrun adapter checkpoint, strictly.

    petrun ckpt import-peft --config configs/llama2/lora_llama2_tiny.yaml --src peft_adapter/
    --dst adapter.ckpt

    Missing, unused or wrongly shaped tensors and a scaling or length that disagrees with the
    config's pet_config are errors.
    """
    from petrun.ckpt.peft_format import import_peft as run

    with console.status("reading the PEFT adapter…"):
        result = run(config, src, dst, overwrite=overwrite)
    console.print(f"[green]wrote[/green] {result.dst} — {result.tensors} tensors from a "
                  f"{result.peft_type} adapter", highlight=False, soft_wrap=True)
    console.print(f"next: petrun predict --config {config} --adapter {result.dst} --prompt \"...\"",
                  highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the commands to the `ckpt` group."""
    app.command("merge")(merge)
    app.command("export-peft")(export_peft)
    app.command("import-peft")(import_peft)
