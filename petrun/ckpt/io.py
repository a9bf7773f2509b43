"""Checkpoint files: crash-safe writes, strict loads. The one place that reads/writes weights on disk.

MindSpore's save_checkpoint deletes an existing target before writing and never fsyncs
(reference/feasibility.md §6), and load_param_into_net never raises on missing or unexpected names.
So every file petrun writes goes to a temporary name in the same folder, is fsynced, renamed over
the target with os.replace and the folder is fsynced: after a crash (kill -9, power loss) the
target holds either the old bytes or the new ones. Loads check names, shapes and, where a petrun
manifest describes the file, its size and SHA-256.

Checkpoint folders with manifests, the `latest` pointer and keep-last-N live in ckpt/store.py.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterable, Iterator

from petrun.ckpt.diagnose import names_fix, shapes_fix
from petrun.errors import UserError

# Entries a MindSpore/MindFormers training checkpoint carries besides network weights.
_TRAINING_STATE = re.compile(
    r"^(adam_m\.|adam_v\.|moment1\.|moment2\.|accu_grads\.|global_step$|epoch_num$|step_num$|"
    r"loss_scale$|scale_sense$|current_iterator_step$|last_overflow_iterator_step$|"
    r"learning_rate$|beta1_power$|beta2_power$)")

ADAPTER_PATTERN = "*mindpet_delta_*"  # every PET parameter carries this infix (MindFormers)

# Test-only hook: seconds to sleep between writing a temporary file and renaming it into place,
# so the crash tests can kill -9 a run in the middle of a save (tests/integration/test_resume.py).
PAUSE_ENV = "PETRUN_TEST_PAUSE_BEFORE_REPLACE"


def is_training_state(name: str) -> bool:
    """Optimizer moments, step counters, loss scale: entries that are not network weights."""
    return bool(_TRAINING_STATE.match(name))


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(e: OSError, path: str | Path) -> UserError:
    """A write failure as a UserError that names the file and the likely fix."""
    fixes = {errno.ENOSPC: "free disk space (or point output_dir at a larger disk), then resume "
                           "with --resume",
             errno.EDQUOT: "raise your disk quota or free space, then resume with --resume",
             errno.EFBIG: "the file size limit (ulimit -f) is too small for this checkpoint; "
                          "raise it, then resume with --resume",
             errno.EACCES: "make output_dir writable, or choose another with --output_dir DIR",
             errno.EPERM: "make output_dir writable, or choose another with --output_dir DIR",
             errno.EROFS: "the file system is read-only; choose another --output_dir",
             errno.ENOTDIR: "a path component is a regular file; choose another --output_dir"}
    return UserError(f"could not write ({e.strerror or e})", file=str(path), key="output_dir",
                     fix=fixes.get(e.errno, "check free disk space and that output_dir is writable"))


def _commit(tmp: Path, path: Path) -> None:
    """fsync `tmp`, rename it over `path`, fsync the folder (the rename itself is then durable)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        time.sleep(float(pause))
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _tmp_name(path: Path) -> Path:
    # Hidden, same folder (os.replace must not cross file systems), unique per process.
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


def is_leftover_tmp(name: str) -> bool:
    """A temporary file of an interrupted write (ours, or MindSpore's own .tmp of it)."""
    return name.startswith(".") and ".partial-" in name


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", **open_kw) -> Iterator[IO]:
    """Open a temporary file next to `path`; on a clean exit it is fsynced and renamed over
    `path`, on any error (Ctrl-C included) it is removed and `path` is left as it was.
    OSErrors propagate as they are; callers choose how to word them."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, mode, **open_kw) as f:
            yield f
        _commit(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    try:
        with atomic_file(path) as f:
            f.write(data)
    except OSError as e:
        raise write_error(e, path) from None
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def save_params(params: Iterable, path: str | Path, *, append: dict | None = None) -> Path:
    """Write Parameters (or {'name','data'} dicts) to `path` as a MindSpore .ckpt, crash-safely.

    A crash at any instant leaves either the previous file or the new one under `path`, never a
    partial file; the temporary file is removed on error.
    """
    import mindspore as ms

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, path.parent) from None
    tmp = _tmp_name(path)
    if tmp.suffix != ".ckpt":   # MindSpore would append it and write elsewhere
        tmp = tmp.with_name(tmp.name + ".ckpt")
    save_list = list(params)
    try:
        ms.save_checkpoint(save_list, str(tmp), append_dict=append or None)
        _commit(tmp, path)
    except OSError as e:
        raise write_error(e, path) from None
    finally:
        # MindSpore writes `tmp` via its own `<tmp stem>.tmp`; remove whichever survived an error.
        for leftover in (tmp, tmp.with_suffix(".tmp")):
            if leftover.exists():
                leftover.unlink()
    return path


def sha256_file(path: str | Path, chunk: int = 1 << 23) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def describe_file(path: str | Path, *, digest: bool = True) -> dict:
    """{"path", "bytes"[, "sha256"]}: how manifests pin a file."""
    p = Path(path)
    out = {"path": str(p), "bytes": p.stat().st_size}
    if digest:
        out["sha256"] = sha256_file(p)
    return out


def checkpoint_files(path: str | Path, key: str = "load_checkpoint") -> list[Path]:
    """The .ckpt files `path` denotes: a file, or every .ckpt directly inside a folder.

    A petrun checkpoint folder (output/checkpoint/rank_N, with a `latest` pointer) denotes its
    newest intact adapter, not every step's file at once. Errors name `key`, the option or config
    key the path came from.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        from petrun.ckpt.store import CheckpointFolder
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


def refuse_existing(dst: Path, overwrite: bool, key: str = "--dst") -> None:
    """Outputs are replaced only when asked (as data prepare, ckpt shard and ckpt transform do)."""
    if Path(dst).exists() and not overwrite:
        raise UserError("the output already exists", file=str(dst), key=key,
                        fix=f"pass --overwrite or choose another {key}")


def read_checkpoint(path: str | Path, key: str = "load_checkpoint") -> dict:
    """name -> Parameter for every file `path` denotes (a folder's files are merged).

    A file that a petrun manifest describes must match its recorded size and SHA-256.
    """
    import mindspore as ms

    from petrun.ckpt.store import verify_against_manifest

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
    state = [n for n in ckpt if _TRAINING_STATE.match(n)]
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
        lines = []
        if missing:
            lines.append(f"{len(missing)} model parameters are not in the checkpoint, e.g. "
                         + ", ".join(missing[:4]))
        if unexpected:
            lines.append(f"{len(unexpected)} checkpoint entries match no model parameter, e.g. "
                         + ", ".join(unexpected[:4]))
        raise UserError("checkpoint does not match the model: " + "; ".join(lines), file=str(path),
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
