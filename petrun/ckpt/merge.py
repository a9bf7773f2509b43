"""`petrun ckpt merge`: base checkpoint + adapter → one checkpoint with the adapter folded in.

    merge_checkpoint("configs/llama2/lora_llama2_7b.yaml", "base.ckpt", "adapter.ckpt", "merged.ckpt")

The scaling comes from the config's pet_config (LoRA: lora_alpha / lora_rank), never from the
command line: a merge with the wrong scaling is silently wrong. The base file is streamed tensor
by tensor (petrun.ckpt.stream) and the result written under a temporary name and renamed into
place, so memory holds one weight at a time and a crash never leaves a half-written file. Then a
probe batch runs through the unmerged model (base + adapter) and through the plain model with the
merged file; the largest absolute logit difference is reported (and is an error past `tolerance`).
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from petrun.ckpt import stream
from petrun.ckpt.io import is_training_state, refuse_existing
from petrun.ckpt.load import checkpoint_files
from petrun.ckpt.peft_format import pet_side, read_adapter
from petrun.errors import UserError


@dataclass
class MergeResult:
    dst: Path
    pet_type: str
    merged_layers: int
    tensors: int
    max_abs_diff: float | None       # None when the probe was skipped
    probe_shape: tuple[int, int] | None


def merge_plan(side, arrays: dict[str, np.ndarray]) -> dict[str, Callable]:
    """{base tensor name: fp32 array -> merged fp32 array}: the method's streaming merge rule
    (PetMethod.merge_tensors, e.g. petrun/pet/lora.py:merge_tensors) over the adapter arrays."""
    from petrun.pet.config import method, resolve
    from petrun.pet.merge import check_mergeable

    check_mergeable(side.pet_type)
    rule = method(side.pet_type).merge_tensors
    if rule is None:
        raise UserError(f"pet_type {side.pet_type!r} merges in a built model but has no rule to "
                        "merge a checkpoint file", key="model.model_config.pet_config.pet_type",
                        fix="merge in the model (petrun.pet.merge) and save it instead")
    return resolve(rule)(side.model, side.pet, arrays)


def stream_merge(side, base: Path, arrays: dict, dst: Path) -> tuple[int, int]:
    """(merged tensors, tensors written): base → dst with the plan applied, one tensor at a time."""
    plan = merge_plan(side, arrays)
    written = 0
    with stream.CkptReader(base, key="--base") as reader:
        adapters = [n for n in reader.infos if "mindpet_delta_" in n]
        if adapters:
            raise UserError(f"the base checkpoint already holds adapter tensors "
                            f"({', '.join(adapters[:3])})", file=str(base), key="--base",
                            fix="pass the base weights alone (the adapter goes in --adapter)")
        absent = sorted(set(plan) - set(reader.infos))
        if absent:
            raise UserError(f"the base checkpoint lacks {len(absent)} weight(s) the adapter "
                            f"modifies, e.g. {', '.join(absent[:3])}", file=str(base),
                            key="--base", fix="pass the base checkpoint of this config's model")
        writer = stream.CkptWriter(dst)
        try:
            for name, info in reader.infos.items():
                if is_training_state(name):
                    continue   # optimizer moments and counters do not belong in merged weights
                array = reader.read(name)
                if name in plan:
                    merged = plan[name](stream.cast(array, info.dtype, "float32")[0])
                    array, _ = stream.cast(merged.astype(np.float32), "float32", info.dtype)
                writer.write(name, array, info.dtype)
                written += 1
            writer.commit()
        except BaseException:
            writer.abort()
            raise
    return len(plan), written


def probe_ids(vocab: int, seq: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    # Ids from 1: id 0 is the pad id of every family petrun builds, whose keys are masked.
    return np.random.default_rng(seed).integers(1, vocab, (batch, seq)).astype(np.int32)


def probe(cfg, base: Path, adapter: Path, merged: Path, seq: int = 16) -> tuple[float, tuple]:
    """Max |logits(base + adapter) − logits(merged)| on a fixed batch; one model at a time."""
    from petrun.build import as_config, build_model, load_checkpoint, logits
    from petrun.pet.virtual import family_of

    net = build_model(cfg, device_target="CPU")
    load_checkpoint(net, base, key="--base")
    load_checkpoint(net, adapter, key="--adapter")
    fam = family_of(net)
    ids = probe_ids(fam.vocab, min(seq, fam.seq_length))
    unmerged = logits(net, ids)
    del net
    gc.collect()
    plain = build_model(as_config(cfg, ["~model.model_config.pet_config"]),
                        device_target="CPU")
    load_checkpoint(plain, merged, key="--dst")
    return float(np.abs(logits(plain, ids) - unmerged).max()), tuple(ids.shape)


def merge_checkpoint(config, base: str | Path, adapter: str | Path, dst: str | Path,
                     run_probe: bool = True, tolerance: float = 1e-3,
                     overwrite: bool = False) -> MergeResult:
    """`adapter` is a file or a folder, resolved as predict/eval resolve --adapter."""
    base, adapter, dst = Path(base), Path(adapter), Path(dst)
    if dst.suffix != ".ckpt":
        raise UserError("the output must be a .ckpt file", file=str(dst), key="--dst",
                        fix=f"e.g. --dst {dst.with_suffix('.ckpt').name}")
    if base.is_dir():
        raise UserError("--base takes one .ckpt file, and this is a folder", file=str(base),
                        key="--base", fix="pass the base weights' .ckpt file inside it")
    if not base.is_file():
        raise UserError("no such checkpoint file", file=str(base), key="--base",
                        fix="point --base at the base weights' .ckpt file")
    adapters = checkpoint_files(adapter, "--adapter")
    if dst.exists() and dst.resolve() in [base.resolve(), *(f.resolve() for f in adapters)]:
        raise UserError("--dst would overwrite an input", file=str(dst), key="--dst",
                        fix="write the merged weights to a new file")
    refuse_existing(dst, overwrite)
    # the resolved file from here on: a --dst written into a plain adapter folder must not join
    # what the folder denotes when the probe reads it again
    source = adapters[0] if len(adapters) == 1 else adapter
    side = pet_side(config)
    arrays = read_adapter(side, source)
    merged, written = stream_merge(side, base, arrays, dst)
    diff, shape = (None, None)
    if run_probe:
        diff, shape = probe(side.cfg, base, source, dst)
        if diff > tolerance:
            raise UserError(f"merged and unmerged logits differ by {diff:.3g} on the probe batch "
                            f"(tolerance {tolerance:g}); the merged file is at {dst}",
                            file=str(dst), key="--dst",
                            fix="check that --config is the config the adapter was trained with")
    return MergeResult(dst, side.pet_type, merged, written, diff, shape)
