"""Shard a built petrun model for semi-auto parallel: every primitive's strategy and every cell's
pipeline stage, from the layouts of petrun/parallel/strategy.py (the one source of truth that
`petrun ckpt strategy` also writes).

petrun cells declare what they are with a `shard_kind` attribute ("linear", "rmsnorm",
"attention", …) and name their primitives by role; strategy.cell_strategies maps a kind to
{primitive attribute: in_strategy}. Cells that sit outside the layers and own no parameters say
where they run with `pipeline_place` ("first" / "last"). In stand-alone and data-parallel runs
nothing is touched: shard_for_config returns None.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from petrun.errors import UserError
from petrun.parallel.strategy import (ParallelDims, StrategyPlan, WEIGHTED_KINDS, cell_strategies,
                                      family_of, param_rule, plan_layouts)

SHARDED_MODES = ("SEMI_AUTO_PARALLEL", "AUTO_PARALLEL")


@dataclass
class ShardReport:
    plan: StrategyPlan
    strategies: dict[str, tuple] = field(default_factory=dict)   # "cell path.attr" → in_strategy
    stages: dict[str, int] = field(default_factory=dict)         # cell path → pipeline stage


def shard_dims(cfg) -> ParallelDims | None:
    """The parallel shape to shard for, or None when cfg runs stand-alone or data parallel."""
    if not cfg.get("use_parallel"):
        return None
    from petrun.parallel.context import parallel_mode
    if parallel_mode(cfg) not in SHARDED_MODES:
        return None
    return ParallelDims.from_config(cfg)


def shard_for_config(net, cfg) -> ShardReport | None:
    """shard_model with cfg's parallel_config, only in semi-auto / auto parallel."""
    dims = shard_dims(cfg)
    if dims is None:
        return None
    mc = cfg.get("model.model_config") or {}
    return shard_model(net, family_of(cfg.get("model.arch.type")), dims,
                       num_layers=mc.get("num_layers"), offset=mc.get("offset", 0) or 0)


def shard_model(net, family: str, dims: ParallelDims, *, num_layers=None, offset=0) -> ShardReport:
    """Set the in_strategy of every role primitive of `net` and, with pipeline stages, each
    cell's pipeline_stage. Call before compiling, after PET is applied (adapters follow their
    base layers)."""
    params = {p.name: p for p in net.get_parameters()}
    plan = plan_layouts({n: tuple(p.shape) for n, p in params.items()}, dims, family,
                        num_layers=num_layers, offset=offset,
                        trainable=[n for n, p in params.items() if p.requires_grad],
                        dtype_bytes={n: int(getattr(p, "itemsize", 4)) for n, p in params.items()})
    report = ShardReport(plan)
    cells = list(net.cells_and_names())
    for path, cell in cells:
        kind = getattr(cell, "shard_kind", None)
        if kind is None:
            continue
        if kind == "tied_head":     # computes with a table another cell owns
            own = {"table": cell.table_name}
        else:
            own = {p.name.rsplit(".", 1)[-1]: p.name for p in cell.get_parameters(expand=False)}
        if kind in WEIGHTED_KINDS and not own:
            raise ValueError(f"{path} ({kind}) owns no parameters to shard by")
        if kind in ("attention", "flash_attention"):
            _check_heads(cell, dims)
        for flag in ("full_broadcast", "gather_heads"):
            # CPU-only paths (models/broadcast.py). The strategies below annotate the plain
            # primitives: split_heads/merge_heads, and small operands in their own shape (a (H,)
            # weight, a (1, 1, S, D) table), not a Tile output.
            if getattr(cell, flag, False):
                setattr(cell, flag, False)
        if kind == "attention":
            # The additive fp32 mask (a speed path built from functional ops) has no declared
            # strategies; a sharded attention keeps the select path, whose primitives do.
            cell.additive_mask = False
            cell.fast_core = None    # models/attention_core.py: its backward has no strategies
        layouts = {local: plan.layouts[name] for local, name in own.items()}
        batched = not any(getattr(param_rule(family, n), "kind", None) == "encoder"
                          for n in own.values())
        # Fused Ascend cells (models/kernels.py) carry MindFormers' strategies themselves.
        fused = getattr(cell, "shard_strategies", None)
        roles = (fused(dims.dp, dims.mp) if fused
                 else cell_strategies(kind, dims, layouts, batched))
        for role, strategy in roles.items():
            prim = _attr(cell, role)
            if prim is None or not hasattr(prim, "shard"):
                raise ValueError(f"{path or type(cell).__name__} ({kind}) has no primitive {role!r}")
            prim.shard(strategy)
            report.strategies[f"{path}.{role}" if path else role] = strategy
    if dims.pp > 1:
        report.stages = _assign_stages(cells, plan, dims)
    return report


def _attr(cell, dotted: str):
    for part in dotted.split("."):
        cell = getattr(cell, part, None)
    return cell


def _check_heads(cell, dims: ParallelDims) -> None:
    """Attention runs with heads split by mp: both head counts must divide (as in MindFormers)."""
    for what, n in (("attention heads", cell.num_heads), ("key/value heads", cell.n_kv_heads)):
        if n % dims.mp:
            raise UserError(f"model_parallel {dims.mp} does not divide the {n} {what}",
                            key="parallel_config.model_parallel",
                            fix="choose a model_parallel that divides num_heads and n_kv_heads "
                                "(multi_query_group_num for ChatGLM2)")


def _assign_stages(cells, plan: StrategyPlan, dims: ParallelDims) -> dict[str, int]:
    """pipeline_stage of every cell whose stage is known, parents before children: a declared
    pipeline_place; else the one stage all its parameters' layouts lie on (a decoder layer i →
    layer_stage(i), the embedding → first, the final norm and head → last); else its parent's.
    Cells spanning stages (the model itself) get none."""
    stages: dict[str, int] = {}
    for path, cell in cells:
        place = getattr(cell, "pipeline_place", None)
        found = {plan.layouts[p.name].stage for p in cell.get_parameters()}
        parent = path.rpartition(".")[0]
        if place is not None:
            stage = 0 if place == "first" else dims.pp - 1
        elif len(found) == 1:
            stage = found.pop()
        elif not found and path and parent in stages:
            stage = stages[parent]
        else:
            continue
        cell.pipeline_stage = int(stage)
        stages[path] = int(stage)
    return stages
