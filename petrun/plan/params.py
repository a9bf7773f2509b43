"""Parameter memory per device: weights, gradients and optimizer states of each pipeline stage,
split by model parallel and by MindSpore's parallel optimizer as they really are (the rules are
in petrun/plan/estimator.py's docstring). Sources: MindSpore's "Optimizer Parallel" page
(docs/mindspore/source_en/features/parallel/optimizer_parallel.md, r2.10: weights and optimizer
states split over the data-parallel ranks holding the same slice, dim 0 divisible, `threshold`
KB minimum), set_auto_parallel_context's parallel_optimizer_config docstring (threshold,
optimizer_weight_shard_size, optimizer_level level1 default), and step_parallel.cc
(SetParallelShape: trainable parameters only; InsertAllGatherOp: gathered after a downcast).
No MindSpore here either.
"""
from __future__ import annotations

import re

from petrun.models.shapes import DTYPE_BYTES, Dims, ParamSpec
from petrun.plan.layout import Layout
from petrun.plan.pet import PetShapes

_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """The decoder layer index in a parameter name, None outside the layers."""
    m = _LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None


def stages_of(specs: dict[str, ParamSpec], dims: Dims, pp: int, offset=0) -> dict[str, int]:
    """Pipeline stage of every parameter: layers split as the models and strategy files split
    them (strategy.layer_stage, MindFormers' rule); what precedes the first layer (embeddings)
    on the first stage, what follows the last (final norm, lm_head) on the last."""
    from petrun.parallel.strategy import layer_stage
    out, seen_layer = {}, False
    for name in specs:
        i = layer_of(name)
        if i is not None and not name.startswith("mindpet_delta_"):
            out[name] = layer_stage(i, dims.num_layers, pp, offset)
            seen_layer = True
        elif "mindpet_delta_" in name and i is None:
            out[name] = 0        # prefix encoders feed every stage; counted on the first
        else:
            out[name] = pp - 1 if seen_layer else 0
    return out


def _shard(name: str, spec: ParamSpec, specs: dict, lay: Layout) -> int:
    """How many ways model parallel splits this parameter."""
    if lay.mp == 1:
        return 1
    parts = name.split(".")
    layer = layer_of(name) is not None
    owner = specs.get(".".join(parts[:-1]) + ".weight")
    is_matmul = spec.matmul or (spec.kind == "bias" and owner is not None and owner.matmul)
    if layer and is_matmul:
        return lay.mp
    if not layer and not lay.vocab_emb_dp and (is_matmul or spec.kind == "embedding"):
        return lay.mp
    return 1


def optimizer_split(spec: ParamSpec, part: int, lay: Layout) -> int:
    """How many ways the parallel optimizer splits a trainable parameter (1: kept whole), by
    MindSpore's rule as petrun.parallel.strategy._opt_shard states it for strategy files: over
    the ranks that hold the same slice (dp, × mp when model parallel leaves the parameter
    whole), or optimizer_weight_shard_size of them when that divides the group; only when the
    slice is at least parallel_optimizer_threshold KB and its dim 0 divides by the group. (Which
    dim model parallel cuts is not known here: dim 0 is taken as cut when it divides.)"""
    if not lay.optimizer_shard or not spec.shape:
        return 1
    group = lay.dp * (lay.mp if part == 1 else 1)
    size = group if lay.shard_size in (-1, 0) else min(lay.shard_size, group)
    if size <= 1 or group % size:
        return 1
    if spec.nbytes / part < lay.shard_threshold_kb * 1024:
        return 1
    dim0 = spec.shape[0] // part if part > 1 and spec.shape[0] % part == 0 else spec.shape[0]
    return size if dim0 % size == 0 else 1


def _gathered_bytes(spec: ParamSpec, dims: Dims, lay: Layout) -> float:
    """Bytes of the all-gathered copy of a sharded weight. Where the layer casts an fp32 weight
    down before use, MindSpore casts the slice first and gathers in the lower precision
    (step_parallel.cc InsertAllGatherOp, FindChildCastWithFP32ToFP16: "for saving
    communication"): petrun's Linear/LoRA cast weight and bias to compute_dtype, the composite
    RMSNorm its weight to the residual dtype; embeddings and the fused RmsNorm use it as is."""
    own = DTYPE_BYTES[spec.dtype]
    if spec.kind in ("linear", "matmul", "lora", "bias", "encoder"):
        return spec.size * min(own, DTYPE_BYTES[dims.compute_dtype])
    if spec.kind == "norm" and dims.norm == "rms" and not lay.fused_norm:
        return spec.size * min(own, DTYPE_BYTES[dims.residual_dtype])
    return spec.size * own


def _optimizer_bytes(spec: ParamSpec, optimizer_type: str) -> int:
    if optimizer_type == "FP32StateAdamWeightDecay":
        return 2 * 4 * spec.size
    return 2 * spec.nbytes


def param_memory(pet: PetShapes, dims: Dims, lay: Layout, stages: dict[str, int],
                 opt_type: str, accum: int) -> tuple[list, list, list]:
    """(weights, gradients, optimizer) bytes on one device of each pipeline stage."""
    trainable = set(pet.trainable)
    w, g, o = [0.0] * lay.pp, [0.0] * lay.pp, [0.0] * lay.pp
    for name, spec in pet.params.items():
        st = stages[name]
        part = _shard(name, spec, pet.params, lay)
        wb = spec.nbytes / part
        if name in trainable:
            split = optimizer_split(spec, part, lay)
            w[st] += wb / split
            if split > 1 and not lay.comm_recompute:
                # MindSpore all-gathers a sharded weight before its layer runs and, without
                # parallel_optimizer_comm_recompute, keeps the gathered copy for backward.
                w[st] += _gathered_bytes(spec, dims, lay) / part
            # The full gradient is transient: AllGather's backward is a ReduceScatter, so what
            # stays until the update is the slice.
            g[st] += wb / split
            o[st] += _optimizer_bytes(spec, opt_type) / part / split
            if accum > 1:                # fp32 accumulation buffers
                g[st] += spec.size * 4 / part / (split if lay.grad_accum_shard else 1)
        else:
            w[st] += wb
    return w, g, o
