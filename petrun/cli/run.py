"""`petrun finetune|train|eval|predict`: the run verbs, with run_mindformer.py's flag surface."""
from __future__ import annotations

from typing import Optional

import typer

from petrun.cli.common import OVERRIDE_CONTEXT, collect_overrides, console
from petrun.config import load_config


def _flags(run_mode, load_checkpoint, auto_trans_ckpt, use_parallel, train_dataset_dir,
           eval_dataset_dir, src_strategy_path_or_dir, output_dir, device_id, seed,
           resume_training):
    return dict(run_mode=run_mode, load_checkpoint=load_checkpoint, auto_trans_ckpt=auto_trans_ckpt,
                use_parallel=use_parallel, train_dataset_dir=train_dataset_dir,
                eval_dataset_dir=eval_dataset_dir, src_strategy_path_or_dir=src_strategy_path_or_dir,
                output_dir=output_dir, device_id=device_id, seed=seed,
                resume_training=resume_training)


def _make_verb(mode: str, summary: str):
    def verb(ctx: typer.Context,
             config: str = typer.Option(..., "--config", "-c", help="YAML file (MindFormers schema)."),
             run_mode: Optional[str] = typer.Option(None, "--run_mode", help="train|finetune|eval|predict"),
             load_checkpoint: Optional[str] = typer.Option(None, "--load_checkpoint", help="Weights: a file, a folder, or a folder of rank_N/."),
             auto_trans_ckpt: Optional[str] = typer.Option(None, "--auto_trans_ckpt", help="True/False: reshard load_checkpoint to this layout."),
             use_parallel: Optional[str] = typer.Option(None, "--use_parallel", help="True/False: distributed run (under msrun)."),
             train_dataset_dir: Optional[str] = typer.Option(None, "--train_dataset_dir", help="Sets train_dataset.data_loader.dataset_dir."),
             eval_dataset_dir: Optional[str] = typer.Option(None, "--eval_dataset_dir", help="Sets eval_dataset.data_loader.dataset_dir."),
             src_strategy_path_or_dir: Optional[str] = typer.Option(None, "--src_strategy_path_or_dir", help="Strategy of a sharded load_checkpoint."),
             output_dir: Optional[str] = typer.Option(None, "--output_dir", help="Where checkpoints, logs and strategies go."),
             device_id: Optional[str] = typer.Option(None, "--device_id", help="Sets context.device_id."),
             seed: Optional[str] = typer.Option(None, "--seed", help="Global seed."),
             resume_training: Optional[str] = typer.Option(None, "--resume_training", help="True/False or a checkpoint name."),
             ):
        overrides = collect_overrides(ctx.args, _flags(
            run_mode or (None if mode == "finetune" else mode), load_checkpoint, auto_trans_ckpt,
            use_parallel, train_dataset_dir, eval_dataset_dir, src_strategy_path_or_dir,
            output_dir, device_id, seed, resume_training))
        cfg = load_config(config, overrides)
        from petrun.cli.dispatch import run_job
        run_job(cfg, verb=mode, console=console)

    verb.__doc__ = summary + "\n\nExtra words are overrides: a.b.c=value, ~a.b, or --a.b.c value."
    return verb


def register(app: typer.Typer) -> None:
    for mode, summary in (
        ("finetune", "Finetune a model with the PET method in model.model_config.pet_config."),
        ("train", "Train (same recipe as finetune; MindFormers' run_mode train)."),
        ("eval", "Evaluate loss and perplexity on eval_dataset."),
        ("predict", "Generate text."),
    ):
        app.command(mode, context_settings=OVERRIDE_CONTEXT)(_make_verb(mode, summary))
