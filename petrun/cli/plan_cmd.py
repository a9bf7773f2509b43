"""`petrun plan`: per-device memory, FLOPs and step time of a run, and what to change to fit.

Prints; the numbers come from petrun.plan (no MindSpore import, nothing is built).
"""
from __future__ import annotations

import json
from typing import Optional

import typer

from petrun.cli.common import OVERRIDE_CONTEXT, console
from petrun.config import load_config
from petrun.config.overrides import parse_args
from petrun.errors import UserError

GiB = 2 ** 30


def _size(n: float) -> str:
    if n >= 0.1 * GiB:
        return f"{n / GiB:,.2f} GiB"
    if n >= 2 ** 20:
        return f"{n / 2 ** 20:,.1f} MiB"
    return f"{n / 1024:,.1f} KiB"


def _count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:,.2f} {unit}"
    return str(n)


def plan(ctx: typer.Context,
         config: str = typer.Option(..., "--config", "-c", help="YAML file (MindFormers schema)."),
         devices: Optional[int] = typer.Option(None, "--devices",
                                               help="Number of devices; data_parallel = devices / (model_parallel × pipeline_stage)."),
         device_memory: Optional[str] = typer.Option(None, "--device-memory",
                                                     help="Memory of one device, e.g. 64GB (default: context.max_device_memory, or free RAM on CPU)."),
         device_target: Optional[str] = typer.Option(None, "--device-target",
                                                     help="Plan for CPU or Ascend instead of context.device_target."),
         run_mode: Optional[str] = typer.Option(None, "--run-mode", help="finetune|train|eval|predict (default: the config's run_mode)."),
         peak_tflops: Optional[float] = typer.Option(None, "--peak-tflops", help="Peak TFLOP/s of one device (default: documented figure)."),
         mfu: Optional[float] = typer.Option(None, "--mfu", help="Fraction of peak the step reaches (default 0.5 CPU, 0.4 Ascend)."),
         output: str = typer.Option("table", "--output", "-o", help="table or json."),
         ):
    """Memory per device, FLOPs and step time for a config, and the biggest levers to make it fit.

    Extra words are overrides: a.b.c=value, ~a.b. Nothing is built and MindSpore is not imported.
    """
    from petrun.plan import device as dev
    from petrun.plan.estimator import estimate, with_budget
    from petrun.plan.levers import levers, path_to_fit

    _check_options(output, device_target, devices, peak_tflops, mfu)
    budget_bytes = dev.parse_size(device_memory) if device_memory is not None else None
    if device_memory is not None and budget_bytes is None:
        raise UserError(f"--device-memory {device_memory!r} is not a size", fix="e.g. 64GB or 512MB")
    if budget_bytes is not None and budget_bytes <= 0:
        # 0 would read as "not given" further down and the config's budget would be used instead
        raise UserError(f"{device_memory!r} is not a positive size",
                        key="--device-memory",
                        fix="give the memory of one device, e.g. --device-memory 64GB, or leave "
                            "it out to use context.max_device_memory")
    cfg = load_config(config, parse_args(ctx.args))
    kw = {"devices": devices, "peak_tflops": peak_tflops, "mfu": mfu}
    est = estimate(cfg, run_mode=run_mode, device_target=device_target, **kw)
    with_budget(est, cfg, budget_bytes)
    lever_kw = {"devices": devices} if devices else {}
    options = levers(cfg, est, **lever_kw)
    route = path_to_fit(cfg, est, est.budget, **lever_kw) if est.fits is False else []
    if output == "json":
        data = est.to_dict()
        data["levers"] = [lv.to_dict() for lv in options]
        data["fit_with"] = [lv.to_dict() for lv in route]
        print(json.dumps(data, indent=2))
        return
    _render(cfg, est, options, route)


def _check_options(output, device_target, devices, peak_tflops, mfu) -> None:
    if output not in ("table", "json"):
        raise UserError(f"must be table or json, got {output!r}", key="--output",
                        fix="use --output table or --output json")
    if device_target and device_target not in ("CPU", "Ascend", "GPU"):
        raise UserError(f"must be CPU, Ascend or GPU, got {device_target!r}",
                        key="--device-target", fix="e.g. --device-target Ascend")
    # Checked here rather than with typer's min=, so the message has petrun's form and a Fix.
    if devices is not None and devices < 1:
        raise UserError(f"must be at least 1, got {devices}", key="--devices",
                        fix="give the number of devices of the job, e.g. --devices 8")
    if peak_tflops is not None and not peak_tflops > 0:
        raise UserError(f"must be positive, got {peak_tflops}", key="--peak-tflops",
                        fix="give one device's peak TFLOP/s, e.g. --peak-tflops 256, or leave it "
                            "out to use the documented figure")
    if mfu is not None and not 0 < mfu <= 1:
        raise UserError(f"must be in (0, 1], got {mfu}", key="--mfu",
                        fix="give the fraction of peak a step reaches, e.g. --mfu 0.4")


def _render(cfg, est, options, route) -> None:
    from petrun.plan.estimator import ACCELERATOR_UNCERTAINTY
    from rich.table import Table

    lay = est.layout
    method = est.pet_type or ("full finetune" if est.run_mode in ("finetune", "train") else "-")
    console.print(f"[bold]petrun plan[/bold] {cfg.source}")
    console.print(f"{est.arch}, {est.run_mode}, {method}, on {est.device_target}: "
                  f"{lay.describe()}", highlight=False)
    console.print(f"batch {est.batch_size} × seq {est.seq_length} per data-parallel rank"
                  + (f", gradient accumulation {est.grad_accum}" if est.grad_accum > 1 else ""),
                  highlight=False)

    params = Table(title="Parameters (whole model)", title_justify="left")
    for col in ("dtype", "count", "bytes"):
        params.add_column(col, justify="right" if col != "dtype" else "left")
    for dtype, (count, nbytes) in sorted(est.params_by_dtype.items()):
        params.add_row(dtype, _count(count), _size(nbytes))
    pct = 100 * est.params_trainable / est.params_total if est.params_total else 0
    params.caption = (f"total {est.params_total:,} · trainable {est.params_trainable:,} "
                      f"({pct:.2f}%)")
    console.print(params)

    mem = Table(title=f"Memory per device" + (f" (pipeline stage {est.stage})" if lay.pp > 1 else ""),
                title_justify="left")
    mem.add_column("part")
    mem.add_column("bytes", justify="right")
    mem.add_column("what", style="dim")
    layers = int(est.terms.get("layers", 0))
    rows = [("weights", est.weights, "all parameters after model/pipeline/optimizer sharding"),
            ("gradients", est.gradients, "trainable parameters only"),
            ("optimizer", est.optimizer, "AdamW m and v of trainable parameters"),
            ("activations", est.activations, f"{layers} layers kept for backward"
             if est.run_mode in ("finetune", "train") else "one layer at a time"),
            ("logits / loss", est.head, "batch × seq × vocab logits and their fp32 copies"),
            ("KV cache", est.kv_cache, "predict"),
            ("runtime", est.runtime, "framework, compiled graph, workspace")]
    for name, value, what in rows:
        if value:
            mem.add_row(name, _size(value), what)
    if est.load_extra and est.weights + est.load_extra + est.runtime >= est.peak:
        mem.add_row("(loading)", _size(est.load_extra), "checkpoint copy while loading sets the peak")
    verdict = ""
    if est.budget is not None:
        verdict = {"fits": "[green]fits[/green]", "over": "[red]does not fit[/red]",
                   "tight": "[yellow]may not fit[/yellow]"}[est.verdict] + \
            f" {_size(est.budget)} ({est.budget_source})"
    mem.add_row("[bold]peak[/bold]", f"[bold]{_size(est.peak)}[/bold]", verdict)
    console.print(mem)

    if est.per_layer:
        act = Table(title="Activations of one layer, one micro-batch", title_justify="left")
        act.add_column("term")
        act.add_column("bytes", justify="right")
        for name, value in est.per_layer.items():
            act.add_row(name, _size(value))
        act.add_row("[bold]total[/bold]", f"[bold]{_size(sum(est.per_layer.values()))}[/bold]")
        if est.layout.recompute:         # only where the model recomputes (layout.recompute_applied)
            act.caption = (f"with full recompute a layer keeps only its input: "
                           f"{_size(est.per_layer_recompute)}")
        console.print(act)

    console.print(f"[bold]Compute[/bold]: {est.flops_per_step / 1e12:,.3f} TFLOP per step per "
                  f"device → ~{est.step_time_s:,.3g} s per step, ~{est.tokens_per_s:,.0f} tokens/s "
                  f"for the job (peak {est.peak_flops / 1e12:,.3g} TFLOP/s: {est.peak_source}; "
                  f"{est.mfu:.0%} of it assumed)", highlight=False)
    if options:
        console.print("[bold]Levers[/bold] (biggest saving first):")
        for i, o in enumerate(options, 1):
            console.print(f"  {i}. {o.what} → {_size(o.peak)} (saves {_size(o.saves)}): "
                          f"{' '.join(o.overrides)}" + (f"  [dim]({o.note})[/dim]" if o.note else ""),
                          highlight=False)
    if route:
        merged: dict[str, str] = {}
        for o in route:
            for ov in o.overrides:
                merged[ov.split("=", 1)[0]] = ov
        console.print(f"[bold]Fits with[/bold] {' + '.join(o.what for o in route)} → "
                      f"~{_size(route[-1].peak)}: {' '.join(merged.values())}", highlight=False)
    if est.verdict == "tight":
        console.print(f"[yellow]May not fit[/yellow]: {_size(est.peak)} against {_size(est.budget)} "
                      f"is within the ±{ACCELERATOR_UNCERTAINTY:.0%} uncertainty of the "
                      f"{est.device_target} estimate (analytic; not measured on that device). "
                      "Pre-flight warns instead of refusing; the route above makes it fit for sure.",
                      highlight=False)
    if est.fits is False and not route:
        console.print("[red]No lever on offer makes it fit[/red]: a smaller model, more devices "
                      "or more memory per device.")
    for note in est.notes:
        console.print(f"[dim]note: {note}[/dim]", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("plan", context_settings=OVERRIDE_CONTEXT)(plan)
