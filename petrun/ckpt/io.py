"""Checkpoint files: atomic saves, strict loads. The one place that reads/writes weights on disk.

MindSpore's save_checkpoint deletes an existing target before writing and never fsyncs
(reference/feasibility.md §6), and load_param_into_net never raises on missing or unexpected names.
So we save to a temporary name in the same folder, fsync, os.replace, fsync the folder; and we
check names and shapes ourselves before loading.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from petrun.errors import UserError

# Entries a MindSpore/MindFormers training checkpoint carries besides network weights.
_TRAINING_STATE = re.compile(
    r"^(adam_m\.|adam_v\.|moment1\.|moment2\.|accu_grads\.|global_step$|epoch_num$|step_num$|"
    r"loss_scale$|scale_sense$|current_iterator_step$|last_overflow_iterator_step$|"
    r"learning_rate$|beta1_power$|beta2_power$)")


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_params(params: Iterable, path: str | Path, *, append: dict | None = None) -> Path:
    """Write Parameters (or {'name','data'} dicts) to `path` atomically.

    A crash at any instant leaves either the previous file or the new one under `path`, never a
    partial file; the temporary file is removed on error.
    """
    import mindspore as ms

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix or '.ckpt'}")
    save_list = list(params)
    try:
        ms.save_checkpoint(save_list, str(tmp), append_dict=append or None)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        raise UserError(f"could not write checkpoint ({e.strerror or e})", file=str(path),
                        fix="check free disk space and that output_dir is writable") from e
    finally:
        for leftover in (tmp, tmp.with_suffix(".tmp")):
            if leftover.exists():
                leftover.unlink()
    return path


def checkpoint_files(path: str | Path, key: str = "load_checkpoint") -> list[Path]:
    """The .ckpt files `path` denotes: a file, or every .ckpt directly inside a folder."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix == ".ckpt"
                       and not f.name.startswith("."))
        if files:
            return files
        if any(d.name.startswith("rank_") for d in p.iterdir() if d.is_dir()):
            raise UserError("this folder holds rank_N/ shards of a distributed checkpoint",
                            file=str(p), key=key,
                            fix="load it with --auto_trans_ckpt True and --src_strategy_path_or_dir, "
                                "or merge it first with `petrun ckpt transform`")
        raise UserError("no .ckpt files in this folder", file=str(p), key=key,
                        fix="point load_checkpoint at a .ckpt file or a folder that contains them")
    raise UserError("checkpoint path does not exist", file=str(p), key=key,
                    fix="check the path (relative paths are resolved against the current directory)")


def read_checkpoint(path: str | Path, key: str = "load_checkpoint") -> dict:
    """name -> Parameter for every file `path` denotes (a folder's files are merged)."""
    import mindspore as ms

    merged: dict = {}
    for f in checkpoint_files(path, key):
        try:
            merged.update(ms.load_checkpoint(str(f)))
        except (ValueError, RuntimeError, OSError) as e:
            raise UserError(f"cannot read checkpoint: {str(e).splitlines()[0][:200]}", file=str(f),
                            key=key, fix="the file is truncated or not a MindSpore .ckpt; "
                                         "re-save it or pick an intact checkpoint") from None
    return merged


def load_into(net, path: str | Path, *, strict: bool = True, allow_missing: Iterable[str] = (),
              key: str = "load_checkpoint") -> dict:
    """Load a checkpoint into `net`, checking names and shapes first.

    strict: every network parameter not matched by `allow_missing` (fnmatch patterns, e.g. the
    adapter parameters of a fresh PET run) must be in the checkpoint, and every checkpoint entry
    that is not training state (optimizer moments, step counters) must exist in the network.
    Returns {"loaded": [...], "missing": [...], "ignored": [...]}.
    """
    import fnmatch

    import mindspore as ms

    ckpt = read_checkpoint(path, key)
    params = {p.name: p for p in net.get_parameters()}
    state = [n for n in ckpt if _TRAINING_STATE.match(n)]
    weights = {n: v for n, v in ckpt.items() if n not in set(state)}
    unexpected = sorted(set(weights) - set(params))
    missing = sorted(n for n in params if n not in weights
                     and not any(fnmatch.fnmatchcase(n, pat) for pat in allow_missing))
    if strict and (unexpected or missing):
        lines = []
        if missing:
            lines.append(f"{len(missing)} model parameters are not in the checkpoint, e.g. "
                         + ", ".join(missing[:4]))
        if unexpected:
            lines.append(f"{len(unexpected)} checkpoint entries match no model parameter, e.g. "
                         + ", ".join(unexpected[:4]))
        raise UserError("checkpoint does not match the model: " + "; ".join(lines), file=str(path),
                        key=key, fix="check that the checkpoint is for this model family and size "
                                     "(MindFormers names such as model.layers.0.attention.wq.weight); "
                                     "convert HF weights with `petrun ckpt convert`")
    bad_shapes = [(n, tuple(v.shape), tuple(params[n].shape)) for n, v in weights.items()
                  if n in params and tuple(v.shape) != tuple(params[n].shape)]
    if bad_shapes:
        n, got, want = bad_shapes[0]
        raise UserError(f"shape mismatch for {n}: checkpoint {got}, model {want}"
                        + (f" (and {len(bad_shapes) - 1} more)" if len(bad_shapes) > 1 else ""),
                        file=str(path), key=key,
                        fix="the checkpoint is from another model size; match model.model_config "
                            "(hidden_size, num_layers, vocab_size, n_kv_heads) to the checkpoint")
    to_load = {n: v for n, v in weights.items() if n in params}
    # Cast to the network's dtype (e.g. bf16 files into an fp32 CPU model).
    for n, v in to_load.items():
        if v.dtype != params[n].dtype:
            to_load[n] = ms.Parameter(v.astype(params[n].dtype), name=n)
    not_loaded, _ = ms.load_param_into_net(net, to_load, strict_load=False)
    leftover = sorted(set(not_loaded) & set(to_load))
    if leftover:
        raise UserError(f"MindSpore did not load {len(leftover)} parameters, e.g. {leftover[:3]}",
                        file=str(path), key=key, fix="report this as a petrun bug")
    return {"loaded": sorted(to_load), "missing": missing, "ignored": sorted(state)}
