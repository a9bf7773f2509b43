"""`petrun ckpt convert`: HF safetensors ↔ MindSpore checkpoints (petrun.ckpt.hf does the work)."""
from __future__ import annotations

from typing import Optional

import typer

from petrun.cli.common import TensorProgress, console

app = typer.Typer(help="Checkpoint tools: HF conversion, resharding, strategy files, adapter merge, PEFT format.",
                  no_args_is_help=True)


@app.command("convert")
def convert(
        model: str = typer.Option(..., "--model", help="Model family: llama2, glm2 or gpt2."),
        src: str = typer.Option(..., "--src", help="HF folder / .safetensors (or a .ckpt with --reverse)."),
        dst: str = typer.Option(..., "--dst", help="Output .ckpt (or a folder with --reverse)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32, fp16 or bf16 (default: keep each tensor's dtype)."),
        reverse: bool = typer.Option(False, "--reverse", help="MindSpore .ckpt → HF safetensors + config.json."),
        config: Optional[str] = typer.Option(None, "--config", "-c", help="petrun YAML of the model (needed by --reverse)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --dst (with --reverse: its model.safetensors and config.json)."),
):
    """Convert weights tensor by tensor (memory holds a few tensors, never the model).

    HF → MindSpore (MindFormers names): --model llama2 --src hf_dir/ --dst llama2_7b.ckpt --dtype bf16

    MindSpore → HF (model.safetensors + config.json): --model gpt2 --src gpt2.ckpt --dst hf_out/
    --reverse --config configs/gpt2/run_gpt2.yaml

    Unknown or missing tensors are errors that name them. Nothing is downloaded.
    """
    from petrun.ckpt import hf

    with TensorProgress() as bar:
        if reverse:
            result = hf.convert_ms_to_hf(model, src, dst, config, dtype, bar.step, bar.on_plan,
                                         overwrite=overwrite)
        else:
            result = hf.convert_hf_to_ms(model, src, dst, dtype, bar.step, bar.on_plan,
                                         overwrite=overwrite)
    console.print(f"[green]wrote[/green] {result.dst} — {result.tensors} tensors, "
                  f"{result.bytes_written / 2**20:,.1f} MiB"
                  + (f" ({len(result.dropped)} source entries skipped: "
                     f"{', '.join(result.dropped[:3])}{' ...' if len(result.dropped) > 3 else ''})"
                     if result.dropped else ""), highlight=False, soft_wrap=True)
    if reverse:
        console.print(f"[green]wrote[/green] {result.dst.parent / 'config.json'}", highlight=False)
