"""petrun/train/heap.py: after a compile the freed C heap goes back to the OS (peak RSS)."""
import ctypes
import sys

import pytest

from petrun.train import heap

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or heap._libc() is None,
                                reason="glibc's malloc_trim")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_freed_heap_pages_go_back_to_the_os():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 2,000 touched 64 KiB blocks (below glibc's mmap threshold: they live in the heap), then
    # every other one freed: holes that free() itself never returns while their neighbours live.
    blocks = [libc.malloc(64 * 1024) for _ in range(2000)]
    for b in blocks:
        ctypes.memset(b, 1, 64 * 1024)
    for b in blocks[::2]:
        libc.free(b)
    before = rss_mib()
    assert heap.release_free_heap()
    after = rss_mib()
    for b in blocks[1::2]:
        libc.free(b)
    assert before - after > 40, (before, after)      # ~62 MiB of holes


def test_the_step_cells_trim_after_compiling():
    pytest.importorskip("mindspore")
    from petrun.train.step import AccumulateStep, TrainStep
    assert issubclass(TrainStep, heap.TrimAfterCompile)
    assert issubclass(AccumulateStep, heap.TrimAfterCompile)
