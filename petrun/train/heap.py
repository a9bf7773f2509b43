"""Give the C heap's free pages back to the OS after a graph compile.

Compiling a training graph leaves a few hundred MiB of glibc heap freed but still mapped (the
front end's temporary IR; a small Llama's step: 225 MiB free of a 517 MiB arena), and peak RSS
counts it for the rest of the run. glibc's malloc_trim(0) returns what it can (57 MiB of that
step's peak; benchmarks/RESULTS.md, experiment 27). No library wraps this one call; elsewhere than
glibc it is skipped.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_free_heap() -> bool:
    """malloc_trim(0) where glibc has it; True when it gave memory back."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


class TrimAfterCompile:
    """Mixin for a graph Cell: each compile() is followed by release_free_heap()."""

    def compile(self, *args, **kwargs):
        try:
            return super().compile(*args, **kwargs)
        finally:
            release_free_heap()
