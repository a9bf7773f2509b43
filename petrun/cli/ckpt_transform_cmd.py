"""`petrun ckpt transform | strategy | shard`: sharded checkpoints and the strategy files that
describe them (petrun.ckpt.transform and petrun.parallel.strategy_file do the work).
Registered on the `ckpt` group of petrun.cli.ckpt_cmd by register(app)."""
from __future__ import annotations

from typing import Optional

import typer

from petrun.cli.common import OVERRIDE_CONTEXT, console


def _report(result, what: str) -> None:
    console.print(f"[green]wrote[/green] {result.dst}: {len(result.files)} rank folder(s) "
                  f"(rank_N/checkpoint_N.ckpt), {result.tensors} tensors — {what}",
                  highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    console.print(f"next: run with --load_checkpoint {result.dst} --auto_trans_ckpt False "
                  "(its layout is already the job's)", highlight=False, soft_wrap=True)


def transform(
        src: str = typer.Option(..., "--src", help="Folder of rank_N/ shards (the parent of rank_0/), or one complete .ckpt."),
        dst: str = typer.Option(..., "--dst", help="Output folder: rank_N/checkpoint_N.ckpt."),
        src_strategy: Optional[str] = typer.Option(None, "--src-strategy", help="Strategy the shards were saved with: a file or the run's strategy/ folder."),
        dst_strategy: Optional[str] = typer.Option(None, "--dst-strategy", help="Target strategy (file or folder); omit to merge into one complete file."),
        prefix: str = typer.Option("checkpoint_", "--prefix", help="Output file name prefix."),
        pick: Optional[str] = typer.Option(None, "--pick", help="Which file of a rank folder holding several: 'newest' or a name pattern."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace rank folders already in --dst."),
):
    """Reshard a distributed checkpoint (MindSpore's transform_checkpoints, checked).

    petrun ckpt transform --src output/checkpoint --src-strategy output/strategy --dst merged/
    petrun ckpt transform --src tp4/ --src-strategy tp4_strategy/ --dst-strategy tp2_strategy/ --dst tp2/
    """
    from petrun.ckpt.transform import transform as run
    with console.status("resharding (MindSpore's transform_checkpoints)…"):
        result = run(src, dst, src_strategy=src_strategy, dst_strategy=dst_strategy,
                     prefix=prefix, pick=pick, overwrite=overwrite, check_names=True)
    _report(result, "merged into one complete checkpoint" if not dst_strategy else "resharded")


def strategy(
        ctx: typer.Context,
        config: str = typer.Option(..., "--config", "-c", help="YAML whose parallel_config describes the target job."),
        out: str = typer.Option(..., "--out", help="Folder for ckpt_strategy_rank_<r>.ckpt files."),
        fmt: str = typer.Option("ckpt", "--format", help="ckpt (protobuf, MindSpore's default) or json."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the strategy files already in --out (all of them, so no stale rank is left)."),
):
    """Write the strategy files a config's parallel_config implies (no Ascend compile needed).

    Use them to shard a complete checkpoint offline (petrun ckpt shard) before a job starts.

    petrun ckpt strategy --config configs/llama2/lora_llama2_7b.yaml --out strategy_dp2_mp4/ \\
        parallel_config.data_parallel=2 parallel_config.model_parallel=4
    Extra words are overrides (a.b=value).
    """
    from petrun.cli.common import collect_overrides
    from petrun.config import load_config
    from petrun.errors import UserError
    from petrun.build import plan_for_config
    from petrun.parallel.strategy_file import check_out_dir, write_plan

    if fmt not in ("ckpt", "json"):
        raise UserError(f"unknown format {fmt!r}", key="--format", fix="use ckpt or json")
    check_out_dir(out, overwrite=overwrite)   # before the model is built: fail in a fraction of a second
    cfg = load_config(config, collect_overrides(ctx.args, {}))
    with console.status("laying out the parameters…"):
        plan = plan_for_config(cfg)
        files = write_plan(plan, out, fmt=fmt, overwrite=overwrite)
    split = sum(1 for l in plan.layouts.values() if l.is_split())
    console.print(f"[green]wrote[/green] {len(files)} strategy files to {out} for "
                  f"{plan.dims.describe()}: {len(plan.layouts)} parameters, {split} of them split",
                  highlight=False, soft_wrap=True)
    for note in plan.notes[:10]:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)


def shard(
        src: str = typer.Option(..., "--src", help="One complete .ckpt (e.g. llama2_7b.ckpt)."),
        strategy_: str = typer.Option(..., "--strategy", help="Target strategy: a file or a folder (petrun ckpt strategy --out)."),
        dst: str = typer.Option(..., "--dst", help="Output folder: rank_N/checkpoint_N.ckpt."),
        prefix: str = typer.Option("checkpoint_", "--prefix", help="Output file name prefix."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace rank folders already in --dst."),
):
    """Split a complete checkpoint into the rank_N/ shards of a strategy.

    petrun ckpt shard --src llama2_7b.ckpt --strategy strategy_dp2_mp4/ --dst llama2_7b_mp4/
    """
    from petrun.ckpt.transform import shard as run
    with console.status("splitting the checkpoint into rank shards…"):
        result = run(src, strategy_, dst, prefix=prefix, overwrite=overwrite)
    _report(result, "sharded")


def register(app: typer.Typer) -> None:
    """Add transform/strategy/shard to the `ckpt` typer group."""
    app.command("transform")(transform)
    app.command("strategy", context_settings=OVERRIDE_CONTEXT)(strategy)
    app.command("shard")(shard)
