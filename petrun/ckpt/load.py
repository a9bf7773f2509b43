"""Reading checkpoints: which files a path denotes, and strict loads into a network.

Loads check names, shapes and, where a petrun manifest describes the file (ckpt/store.py), its
size and SHA-256. MindSpore's load_param_into_net never raises on missing or unexpected names,
so every load of weights into a model goes through load_into.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from petrun.ckpt.diagnose import mismatch_message, names_fix, shapes_fix
from petrun.ckpt.io import ADAPTER_PATTERN, PICKLE_SUFFIXES, is_training_state, refuse_pickle
from petrun.ckpt.store import CheckpointFolder, verify_against_manifest
from petrun.errors import UserError


def checkpoint_files(path: str | Path, key: str = "load_checkpoint") -> list[Path]:
    """The .ckpt files `path` denotes: a file, or every .ckpt directly inside a folder.

    A petrun checkpoint folder (output/checkpoint/rank_N, with a `latest` pointer) denotes its
    newest intact adapter, not every step's file at once. Errors name `key`, the option or config
    key the path came from.
    """
    p = Path(path)
    if p.is_file():
        refuse_pickle(p, key)
        return [p]
    if p.is_dir():
        folder = CheckpointFolder(p)
        if folder.is_petrun_folder():
            import logging
            found = folder.newest_intact(logging.getLogger("petrun").warning)
            if found is None:
                raise UserError("no intact checkpoint in this folder", file=str(p), key=key,
                                fix=f"point {key} at a .ckpt file, or at a folder with a complete "
                                    "checkpoint")
            return [found.adapter]
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix == ".ckpt"
                       and not f.name.startswith("."))
        if files:
            return files
        for f in sorted(p.iterdir()):
            if f.is_file() and f.suffix in PICKLE_SUFFIXES:
                refuse_pickle(f, key)   # e.g. a PEFT folder with only adapter_model.bin
        ranks = sorted(d.name for d in p.iterdir() if d.is_dir() and d.name.startswith("rank_"))
        if ranks:
            fix = ("load it with --auto_trans_ckpt True and --src_strategy_path_or_dir, or merge "
                   "it first with `petrun ckpt transform`") if key == "load_checkpoint" else (
                   f"pass one rank's folder, e.g. {key} {p / ranks[0]}")
            raise UserError("this folder holds rank_N/ folders of a run, not a checkpoint",
                            file=str(p), key=key, fix=fix)
        raise UserError("no .ckpt files in this folder", file=str(p), key=key,
                        fix=f"point {key} at a .ckpt file or a folder that contains them")
    raise UserError("checkpoint path does not exist", file=str(p), key=key,
                    fix="check the path (relative paths are resolved against the current directory)")


def read_checkpoint(path: str | Path, key: str = "load_checkpoint") -> dict:
    """name -> Parameter for every file `path` denotes (a folder's files are merged).

    A file that a petrun manifest describes must match its recorded size and SHA-256.
    """
    import mindspore as ms

    merged: dict = {}
    for f in checkpoint_files(path, key):
        problem = verify_against_manifest(f)
        if problem:
            raise UserError(f"checkpoint is damaged: {problem}", file=str(f), key=key,
                            fix="pick an intact checkpoint (e.g. the previous step's) or re-create it")
        try:
            merged.update(ms.load_checkpoint(str(f)))
        except (ValueError, RuntimeError, OSError) as e:
            raise UserError(f"cannot read checkpoint: {str(e).splitlines()[0][:200]}", file=str(f),
                            key=key, fix="the file is truncated or not a MindSpore .ckpt; "
                                         "re-save it or pick an intact checkpoint") from None
    return merged


def load_into(net, path: str | Path, *, strict: bool = True, allow_missing: Iterable[str] = (),
              key: str = "load_checkpoint", adapter_pattern: str | None = ADAPTER_PATTERN) -> dict:
    """Load a checkpoint into `net`, checking names and shapes first.

    strict: every network parameter not matched by `allow_missing` (fnmatch patterns, e.g. the
    adapter parameters of a fresh PET run) must be in the checkpoint, and every checkpoint entry
    that is not training state (optimizer moments, step counters) must exist in the network.
    A file whose weights all match `adapter_pattern` is an adapter: then exactly the network's
    adapter parameters are required (the base comes from elsewhere).
    Returns {"kind": "adapter"|"full", "loaded": [...], "missing": [...], "ignored": [...]}.
    """
    import fnmatch

    import mindspore as ms

    ckpt = read_checkpoint(path, key)
    params = {p.name: p for p in net.get_parameters()}
    state = [n for n in ckpt if is_training_state(n)]
    weights = {n: v for n, v in ckpt.items() if n not in set(state)}
    unexpected = sorted(set(weights) - set(params))
    is_adapter = bool(adapter_pattern) and bool(weights) and all(
        fnmatch.fnmatchcase(n, adapter_pattern) for n in weights)
    if is_adapter:
        required = [n for n in params if fnmatch.fnmatchcase(n, adapter_pattern)]
    else:
        required = [n for n in params if not any(fnmatch.fnmatchcase(n, p) for p in allow_missing)]
    missing = sorted(n for n in required if n not in weights)
    if strict and (unexpected or missing):
        raise UserError(mismatch_message(missing, unexpected, 4), file=str(path),
                        key=key, fix=names_fix(list(weights), list(params)))
    bad_shapes = [(n, tuple(v.shape), tuple(params[n].shape)) for n, v in weights.items()
                  if n in params and tuple(v.shape) != tuple(params[n].shape)]
    if bad_shapes:
        n, got, want = bad_shapes[0]
        raise UserError(f"shape mismatch for {n}: checkpoint {got}, model {want}"
                        + (f" (and {len(bad_shapes) - 1} more)" if len(bad_shapes) > 1 else ""),
                        file=str(path), key=key, fix=shapes_fix(bad_shapes))
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
    return {"kind": "adapter" if is_adapter else "full", "loaded": sorted(to_load),
            "missing": missing, "ignored": sorted(state)}
