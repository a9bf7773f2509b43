"""The build layer: a Config in, a ready model out. Every path that needs a model goes through here
— the finetune recipe, predict/eval, ckpt merge and PEFT export, strategy planning — so building,
the PET transform, pretrained loading and the auto_trans_ckpt inputs are written once.

    net = build_model(cfg)                       # base model + PET transform (+ shard strategies)
    loaded = load_pretrained(net, cfg, rank=0, world=1, output_dir=out)   # load_checkpoint, resharded
    load_checkpoint(net, "output/checkpoint/rank_0/")                    # strict: names and shapes

It sits above models/, pet/, ckpt/ (formats, transform) and parallel/ (context, strategies, files)
and below train/, infer/ and the api facade (ARCHITECTURE.md, checked by tests/test_architecture.py).
MindSpore is imported inside the functions that need it.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from petrun.ckpt.io import ADAPTER_PATTERN as PET_PATTERN
from petrun.config import Config, load_config, with_overrides
from petrun.errors import UserError


def as_config(config: Config | str | Path, overrides=()) -> Config:
    """A Config from a Config (with `overrides` applied and validated again, the original
    unchanged) or from a YAML path."""
    if isinstance(config, Config):
        return with_overrides(config, overrides) if overrides else config
    return load_config(config, list(overrides))


def build_model(cfg: Config | str | Path, *, device_target: str | None = None, report=None):
    """Base model from model.arch/model.model_config, then the PET transform if pet_config is set,
    then — in semi-auto/auto parallel only — the shard strategies and pipeline stages that
    cfg's parallel_config implies (petrun/parallel/shard.py).

    `report`, if given, is called with the PetReport (trainable-parameter line).
    """
    from petrun.models.registry import build_base_model
    from petrun.parallel.shard import shard_for_config
    from petrun.pet import apply_pet, check_model_pet
    cfg = as_config(cfg)
    pet_config = cfg.get("model.model_config.pet_config")
    check_model_pet(cfg.get("model.arch.type"), cfg.get("model.model_config"), pet_config)
    net = build_base_model(cfg.get("model"), device_target=device_target)
    if pet_config:
        result = apply_pet(net, pet_config)
        net = result.model   # prompt-learning methods wrap the base model
        if report is not None:
            report(result)
    recompute_for_config(net, cfg, device_target)
    shard_for_config(net, cfg)
    return net


def recompute_for_config(net, cfg, device_target: str | None = None) -> int:
    """Apply recompute_config to the built model's decoder layers, as MindFormers r1.3 does
    (petrun/models/recompute.py), from the plan the planner counts (plan/layout.py
    recompute_plan). Returns how many layers got any recompute."""
    from mindspore import nn

    from petrun.models.recompute import apply_recompute
    from petrun.plan.layout import recompute_plan
    if device_target is None:
        import mindspore as ms
        device_target = ms.get_context("device_target")
    plans = recompute_plan(cfg, device_target)
    if not any(p.any for p in plans):
        return 0
    stacks = [c for _, c in net.cells_and_names()
              if isinstance(c, nn.CellList) and len(c) == len(plans)]
    if len(stacks) != 1:
        raise ValueError(f"found {len(stacks)} decoder-layer lists of {len(plans)} layers")
    return apply_recompute(stacks[0], plans)


def load_checkpoint(model, path: str | Path, strict: bool = True, *, allow_missing=(PET_PATTERN,),
                    key: str = "load_checkpoint") -> dict:
    """Load a .ckpt file (or every .ckpt in a folder, e.g. base + adapter) into `model`.

    strict: unknown checkpoint entries or missing model weights are errors. Adapter parameters
    may be missing from a base checkpoint (a fresh PET run starts from the base alone); an
    adapter-only file must carry every adapter parameter of the model.
    """
    from petrun.ckpt.load import load_into
    from petrun.pet import after_load
    from petrun.pet.virtual import explain_shape_mismatch
    try:
        result = load_into(model, path, strict=strict, allow_missing=allow_missing, key=key)
    except UserError as e:
        raise explain_shape_mismatch(model, e) from None
    if strict:
        _check_whole_adapter(model, result, path, key)
    after_load(model, result)
    return result


def _check_whole_adapter(model, result: dict, path, key: str) -> None:
    """A base checkpoint may leave the adapter out (a fresh run), but one that carries part of it
    would leave the rest at its initial values unnoticed (say, a prefix table without the MLP)."""
    import fnmatch
    adapter = [p.name for p in model.get_parameters() if fnmatch.fnmatchcase(p.name, PET_PATTERN)]
    loaded = set(result["loaded"])
    got = [n for n in adapter if n in loaded]
    if got and len(got) < len(adapter):
        missing = [n for n in adapter if n not in loaded]
        raise UserError(f"the checkpoint holds {len(got)} of the model's {len(adapter)} adapter "
                        f"tensors (missing e.g. {', '.join(missing[:3])}); the rest would keep "
                        "their initial values", file=str(path), key=key,
                        fix="load a checkpoint with the whole adapter, trained with this "
                            "pet_config")


def load_pretrained(model, cfg: Config, *, rank: int, world: int, output_dir: str | Path,
                    say: Callable[[str], None] = lambda s: None) -> list:
    """Load cfg's load_checkpoint into `model` (strict; adapter parameters may be absent), after
    auto_trans_ckpt has resharded or merged a rank_N/ source to this job's layout. Returns the
    files loaded ([] without load_checkpoint)."""
    ckpt = cfg.get("load_checkpoint")
    if not ckpt:
        return []
    files = auto_trans_files(cfg, rank=rank, world=world, output_dir=output_dir,
                             expected_full_shapes={p.name: tuple(p.shape)
                                                   for p in model.get_parameters()})
    loaded = files or [ckpt]
    for path in loaded:
        result = load_checkpoint(model, path, strict=True, allow_missing=(PET_PATTERN,))
        say(f"loaded {len(result['loaded'])} tensors from {path}")
    return loaded


def logits(model, input_ids) -> np.ndarray:
    """fp32 logits [batch, seq, vocab] for integer token ids [batch, seq]."""
    import mindspore as ms
    ids = np.asarray(input_ids, dtype=np.int32)
    if ids.ndim == 1:
        ids = ids[None, :]
    model.set_train(False)
    out = model(ms.Tensor(ids))
    return out.asnumpy().astype(np.float32)


# --------------------------------------------------------------------------- strategy planning inputs
def model_parameters(cfg, device_target: str | None = None) -> tuple[dict, set, dict]:
    """({name: full shape}, trainable names, {name: bytes per element}) of the config's model
    with its pet_config applied — built without allocating weights (no_init_parameters), so a
    7B model takes seconds and little memory."""
    from mindspore.nn.utils import no_init_parameters

    target = device_target or (cfg.get("context") or {}).get("device_target", "CPU")
    from petrun.parallel.context import target_available
    if not target_available(target):
        target = "CPU"   # shapes do not depend on it; dtypes only decide the optimizer threshold
    with no_init_parameters():
        net = build_model(cfg, device_target=target)
    shapes, trainable, itemsize = {}, set(), {}
    for p in net.get_parameters():
        shapes[p.name] = tuple(int(d) for d in p.shape)
        itemsize[p.name] = int(p.itemsize) if hasattr(p, "itemsize") else 4
        if p.requires_grad:
            trainable.add(p.name)
    return shapes, trainable, itemsize


def plan_for_config(cfg, device_target: str | None = None):
    """The StrategyPlan that cfg's parallel_config implies for its model (semi-auto layout)."""
    from petrun.parallel.context import parallel_mode
    from petrun.parallel.strategy import ParallelDims, family_of, plan_layouts

    mode = parallel_mode(cfg)
    if mode == "DATA_PARALLEL":
        raise UserError("parallel_mode 0 (data parallel) has no strategy files: every rank holds "
                        "the whole model and loads the complete checkpoint",
                        key="parallel.parallel_mode", file=cfg.origin("parallel.parallel_mode"),
                        fix="set parallel.parallel_mode=1 and the layout in parallel_config")
    family = family_of(cfg.get("model.arch.type"))
    dims = ParallelDims.from_config(cfg)
    shapes, trainable, itemsize = model_parameters(cfg, device_target)
    run_mode = cfg.get("run_mode") or "finetune"
    if run_mode not in ("train", "finetune"):
        trainable = set()   # no optimizer, hence no optimizer sharding
    mc = cfg.get("model.model_config") or {}
    return plan_layouts(shapes, dims, family, num_layers=mc.get("num_layers"),
                        offset=mc.get("offset", 0) or 0, trainable=trainable, dtype_bytes=itemsize)


# --------------------------------------------------------------------------- auto_trans_ckpt inputs
def auto_trans_files(cfg, *, rank: int, world: int, output_dir: str | Path,
                     expected_full_shapes: dict | None = None, timeout_s: float = 7200.0
                     ) -> list[Path] | None:
    """What this rank loads under `auto_trans_ckpt: True` (None: load `load_checkpoint` as is).

    Data parallel keeps whole tensors on every rank: a rank_N/ source is merged once by rank 0
    (src_strategy_path_or_dir says how it was cut); a complete file needs nothing. Semi-auto
    parallel (Ascend) reshards to this job's layout, which petrun computes from parallel_config
    (petrun ckpt strategy) and rank 0 writes to <output_dir>/strategy/ — no compile needed first.
    """
    from petrun.ckpt.transform import auto_transform, is_rank_folder, source_units
    from petrun.parallel.context import parallel_mode
    src = cfg.get("load_checkpoint")
    if not src or not cfg.get("auto_trans_ckpt"):
        return None
    units = source_units(src)
    semi = bool(cfg.get("use_parallel")) and parallel_mode(cfg) != "DATA_PARALLEL"
    dst_strategy = None
    if semi:
        from petrun.parallel.strategy_file import write_plan
        from petrun.ckpt.layout import strategy_dir as strategy_dir_of
        strategy_dir = strategy_dir_of(output_dir)
        if rank == 0:
            if strategy_dir.exists():
                shutil.rmtree(strategy_dir)   # MindFormers too starts each run with a fresh strategy/
            write_plan(plan_for_config(cfg), strategy_dir)
        dst_strategy = str(strategy_dir)
    elif not any(is_rank_folder(p) for _, p in units):
        return None
    src_strategy = cfg.get("src_strategy_path_or_dir") or None
    return auto_transform(load_checkpoint=src, src_strategy=src_strategy, dst_strategy=dst_strategy,
                          output_dir=output_dir, rank=rank, world=world,
                          expected_full_shapes=expected_full_shapes, timeout_s=timeout_s)
