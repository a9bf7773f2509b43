"""Crash-safe file writes: every file petrun writes goes through here.

Each write goes to a temporary name in the same folder, is fsynced, renamed over the target with
os.replace, and the folder is fsynced: after a crash (kill -9, power loss) the target holds either
the old bytes or the new ones. MindSpore's own save_checkpoint deletes an existing target before
writing and never fsyncs (reference/feasibility.md §6), so .ckpt files take this path too
(petrun/ckpt/io.py:save_params). Pure Python: data/, ckpt/ and train/ all write through it.
"""
from __future__ import annotations

import errno
import hashlib
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from petrun.errors import UserError

# Test-only hook: seconds to sleep between writing a temporary file and renaming it into place,
# so the crash tests can kill -9 a run in the middle of a save (tests/integration/test_resume.py).
PAUSE_ENV = "PETRUN_TEST_PAUSE_BEFORE_REPLACE"


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


def commit(tmp: Path, path: Path) -> None:
    """fsync `tmp`, rename it over `path`, fsync the folder (the rename itself is then durable)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        time.sleep(float(pause))
    os.replace(tmp, path)
    fsync_dir(path.parent)


def tmp_name(path: Path) -> Path:
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
    tmp = tmp_name(path)
    try:
        with open(tmp, mode, **open_kw) as f:
            yield f
        commit(tmp, path)
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
