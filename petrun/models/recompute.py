"""Activation recompute: which decoder layers and ops recompute_config recomputes, as MindFormers
r1.3 decides it, and the Cell.recompute() calls that apply it to a built petrun model.

Pure Python apart from the cells handed to apply_recompute, so the planner (petrun/plan/layout.py)
reads the very per-layer plan the model is built with. Sources (MindFormers tag v1.3.0):

- modules/transformer/transformer.py TransformerRecomputeConfig: recompute, select_recompute,
  parallel_optimizer_comm_recompute, select_comm_recompute, mp_comm_recompute,
  recompute_slice_activation.
- models/utils.py LayerSetting (Llama2 and ChatGLM2 call it for every decoder layer):
  `recompute` True → layer.recompute(recompute_slice_activation=...) on every layer and nothing
  else; a per-stage list (int or bool per pipeline stage; True = the whole stage) → the first n
  layers of each stage get layer.recompute(), the others select recompute; False → select
  recompute on every layer. select_recompute is a set of name patterns walked from the layer
  (set_pattern_recompute): True → the defaults `feed_forward\\.mul` and
  `feed_forward\\.w1\\.activation\\.silu` on every layer, a per-stage list → the defaults on the
  first n layers of each stage, a list of patterns → those on every layer, a dict → pattern:
  bool or per-stage list.
- models/llama/llama_transformer.py LLamaAttention: when select_recompute is truthy (any value
  Python calls true, a list of zeros included) and flash attention is off, every layer's rotary
  embedding, kv tile, q·kᵀ, scale, mask add, cast, softmax and ·v are recomputed.
- ChatGLM2Block names its MLP `mlp`, so the default patterns match nothing there (its
  set_select_recompute is never called): select_recompute changes nothing for ChatGLM2.
- models/gpt2/gpt2.py set_parallel_configure_for_layer: `recompute` truthy (a list too) →
  network.recompute(recompute_slice_activation=...) on every block; select_recompute unread.
- parallel_optimizer_comm_recompute, mp_comm_recompute, select_comm_recompute: no Llama2,
  ChatGLM2 or GPT-2 code of r1.3 passes the first two to recompute() (only T5 does), and the
  third only tags communication ops semi-auto parallel inserts; petrun accepts them, like
  MindFormers' three models, without effect.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from petrun.errors import UserError

log = logging.getLogger("petrun")

DEFAULT_PATTERNS = (r"feed_forward\.mul", r"feed_forward\.w1\.activation\.silu")
# MindFormers' select patterns → the petrun attribute they name, per family. Llama's SwiGLU keeps
# MindFormers' `feed_forward` name; its SiLU is the primitive `act` (MindFormers: w1.activation.silu).
_PATTERN_TARGETS = {
    "llama2": {DEFAULT_PATTERNS[0]: "feed_forward.mul", DEFAULT_PATTERNS[1]: "feed_forward.act"},
    "glm2": {},
}
# LLamaAttention's select set in petrun's cells: the rotary cell (MindFormers' apply_rotary_emb)
# and the composite attention core, whose ops are exactly tile_kv … batch_matmul plus the casts.
LLAMA_ATTENTION_SELECT = ("attention.apply_rotary", "attention.core")


@dataclass(frozen=True)
class LayerRecompute:
    full: bool = False                 # layer.recompute(): the layer keeps only its input
    select: tuple[str, ...] = ()       # petrun attribute paths (from the layer) recomputed
    slice_activation: bool = False     # recompute_slice_activation, passed as MindFormers does

    @property
    def any(self) -> bool:
        return self.full or bool(self.select)


def _stage_counts(value, per_stage: list[int], key: str) -> list[int]:
    """MindFormers' _format_recompute_list for pp_interleave_num 1: layers per stage that get
    the setting (True → all, False → none, a list → that many of each stage, capped)."""
    if isinstance(value, bool):
        return list(per_stage) if value else [0] * len(per_stage)
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return list(per_stage)
        if not all(isinstance(v, (bool, int)) for v in value):
            raise UserError(f"{key}: {value!r} is not one entry (int or bool) per pipeline stage",
                            key=key, fix="give a bool, or one int/bool per pipeline stage "
                            "(petrun has no pp_interleave, so no nested lists)")
        if len(value) > len(per_stage):
            raise UserError(f"{key} has {len(value)} entries but there are {len(per_stage)} "
                            "pipeline stages", key=key,
                            fix=f"give at most {len(per_stage)} entries (one per stage)")
        out = [0] * len(per_stage)
        for j, v in enumerate(value):
            out[j] = per_stage[j] if v is True else (0 if v is False else min(int(v), per_stage[j]))
        return out
    raise UserError(f"{key}: {value!r} is neither a bool nor a per-stage list", key=key,
                    fix="use True/False or one int per pipeline stage")


def _select_patterns(value, per_stage: list[int], key: str) -> dict[str, list[int]]:
    """MindFormers' _format_recompute_dict: pattern → layers per stage it applies to."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return {p: list(per_stage) for p in value}
    if isinstance(value, dict):
        return {p: _stage_counts(v, per_stage, f"{key}.{p}") for p, v in value.items()}
    return {p: _stage_counts(value, per_stage, key) for p in DEFAULT_PATTERNS}


def recompute_plan(family: str, rc: dict | None, num_layers: int, pp: int = 1, offset=0,
                   flash_attention: bool = False) -> tuple[LayerRecompute, ...]:
    """One LayerRecompute per decoder layer for `recompute_config` `rc` (the YAML dict), with
    layers split over `pp` stages as MindFormers splits them (parallel/strategy.layer_stage)."""
    from petrun.parallel.strategy import layer_stage, layers_per_stage
    rc = dict(rc or {})
    pp = max(int(pp or 1), 1)
    per_stage = layers_per_stage(num_layers, pp, offset)
    stage = [layer_stage(i, num_layers, pp, offset) for i in range(num_layers)]
    first = [stage.index(s) if s in stage else 0 for s in range(pp)]
    rank = [i - first[stage[i]] for i in range(num_layers)]   # index within its stage
    full_value = rc.get("recompute", False)
    slice_act = bool(rc.get("recompute_slice_activation", False))
    if family == "gpt2":
        # set_parallel_configure_for_layer: any truthy recompute recomputes every block.
        return tuple(LayerRecompute(full=bool(full_value), slice_activation=slice_act)
                     for _ in range(num_layers))
    if family not in _PATTERN_TARGETS:
        raise ValueError(f"unknown model family {family!r}")
    if full_value is True:
        return tuple(LayerRecompute(full=True, slice_activation=slice_act)
                     for _ in range(num_layers))
    full_counts = (_stage_counts(full_value, per_stage, "recompute_config.recompute")
                   if full_value else [0] * pp)
    sel_value = rc.get("select_recompute", False)
    patterns = _select_patterns(sel_value, per_stage, "recompute_config.select_recompute")
    targets = _PATTERN_TARGETS[family]
    unknown = [p for p in patterns if p not in DEFAULT_PATTERNS]
    if unknown:
        raise UserError(f"recompute_config.select_recompute names {unknown}: petrun maps only "
                        f"MindFormers' default patterns {list(DEFAULT_PATTERNS)} onto its cells",
                        key="recompute_config.select_recompute",
                        fix="use True, a per-stage list, or the default patterns")
    attention = (family == "llama2" and bool(sel_value) and not flash_attention)
    plans = []
    for i in range(num_layers):
        if rank[i] < full_counts[stage[i]]:
            plans.append(LayerRecompute(full=True))
            continue
        sel = [targets[p] for p, counts in patterns.items()
               if p in targets and rank[i] < counts[stage[i]]]
        if attention:
            sel.extend(LLAMA_ATTENTION_SELECT)
        plans.append(LayerRecompute(select=tuple(sel)))
    return tuple(plans)


def plan_for_model_config(family: str, rc: dict | None, mc, pp: int = 1,
                          flash_attention: bool = False) -> tuple[LayerRecompute, ...]:
    """recompute_plan with num_layers and offset read from a model config (object or dict)."""
    get = mc.get if isinstance(mc, dict) else (lambda k, d=None: getattr(mc, k, d))
    return recompute_plan(family, rc, int(get("num_layers", 0) or 0), pp,
                          get("offset", 0) or 0, flash_attention)


def _resolve(cell, path: str):
    for part in path.split("."):
        cell = getattr(cell, part)
    return cell


def apply_recompute(layers, plans) -> int:
    """Call recompute() on the layers (a CellList of decoder layers) and ops the plans name.
    Returns how many layers got any recompute."""
    if len(layers) != len(plans):
        raise ValueError(f"{len(plans)} recompute plans for {len(layers)} layers")
    touched = 0
    for layer, plan in zip(layers, plans):
        if plan.full:
            if plan.slice_activation:
                layer.recompute(recompute_slice_activation=True)
            else:
                layer.recompute()
        for path in plan.select:
            _resolve(layer, path).recompute()
        touched += plan.any
    return touched
