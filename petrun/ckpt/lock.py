"""One run at a time per output folder and rank.

Two finetunes into one output_dir would interleave their checkpoints, metrics and `latest` (each
believing its files are the newest). Each rank holds an exclusive advisory lock (flock) on
`<output_dir>/.petrun-rank_<r>.lock` for the whole run: the kernel drops it when the process ends,
however it ends, so a killed run never leaves a stale lock behind. The holder's pid and start
time are written into the file for the message the second run prints.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from petrun.errors import UserError


class RunLock:
    def __init__(self, output_dir: Path, rank: int):
        self.path = Path(output_dir) / f".petrun-rank_{rank}.lock"
        self._fd: int | None = None

    def acquire(self, key: str = "output_dir", origin: str | None = None) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot create the run lock {self.path} ({e.strerror})", key=key,
                            file=origin, fix="choose a writable output_dir (--output_dir DIR)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"another petrun run is writing into {self.path.parent} ({holder}); "
                            "two runs in one output_dir would mix their checkpoints", key=key,
                            file=origin,
                            fix="wait for that run to end (then add --resume to continue it), or "
                                "give this run its own --output_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"
                      .encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing the descriptor drops the flock
            self._fd = None
