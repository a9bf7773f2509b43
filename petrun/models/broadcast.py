"""Binary ops fed inputs of the output's shape, and head layouts swapped without Transpose,
where MindSpore's CPU kernels need it.

MindSpore 2.10's CPU kernel for a broadcasting binary op (Add, Sub, Mul whose inputs differ in
shape) builds two int64 index tables the size of its output and keeps them for the whole run:
16 bytes an element, four times an fp32 output, for every such op in the graph. A small Llama's
LoRA step held 2 GiB of them in a 4.2 GiB peak RSS (benchmarks/RESULTS.md, experiment 20). A
BroadcastTo output is an ordinary tensor of the memory pool, freed and reused after its last use,
so on CPU (KernelChoice.full_broadcast) the composite cells broadcast first; elsewhere they keep
the implicit broadcast, which Ascend's kernels and the sharding strategies expect.

The CPU Transpose kernel does the same: an 8-byte index for every output element, kept per op
(a small Llama's 64 head splits and merges held 256 MiB; RESULTS.md, experiment 26). A row Gather
by a constant (B*S*N,) index moves the same elements with a table 1/D the size, and faster
(KernelChoice.gather_heads). Unstack + Stack would need no table either, but its tuples made the
small step's compile 13.6 -> 35.3 s.
"""
from __future__ import annotations

import numpy as np
from mindspore import Tensor, nn, ops
from mindspore.ops import constexpr


# BroadcastTo's CPU kernel is 2-4x slower than Tile's for the same copy (a row sum spread over
# 512 keys: 24.9 against 6.3 ms; benchmarks/RESULTS.md, experiment 24), so the copy is a Tile.
# A module switch, read when a graph is compiled, so benchmarks/ab_step.py can time the old way.
USE_TILE = True


def multiples(small_shape: tuple, like_shape: tuple) -> tuple:
    """Tile multiples taking `small_shape` (leading 1s implied) to `like_shape`."""
    small_shape = (1,) * (len(like_shape) - len(small_shape)) + small_shape
    out = ()
    for i in range(len(like_shape)):   # a loop, not zip(): graph mode folds this one
        out = out + (like_shape[i] // small_shape[i],)
    return out


def to_shape_of(small, like, on: bool):
    """`small` broadcast to `like`'s shape when `on` (a cell's constant flag), else itself."""
    if not on:
        return small
    if USE_TILE:
        return ops.tile(small, multiples(small.shape, like.shape))
    return ops.broadcast_to(small, like.shape)


@constexpr
def _swap_rows(b: int, a: int, c: int):
    """Row order of (B, A, C) read as (B, C, A): a constant of the graph."""
    return Tensor(np.arange(b * a * c, dtype=np.int32).reshape(b, a, c).transpose(0, 2, 1).ravel())


class SwapAxes12(nn.Cell):
    """(B, A, C, D) → (B, C, A, D) as a Gather of D-wide rows. Its gradient is the same swap of
    the output's gradient (a custom bprop: Gather's own would scatter-add)."""

    def construct(self, x):
        b, a, c, d = x.shape
        rows = ops.gather(ops.reshape(x, (b * a * c, d)), _swap_rows(b, a, c), 0)
        return ops.reshape(rows, (b, c, a, d))

    def bprop(self, x, out, dout):
        return (self.construct(dout),)


_SWAP = SwapAxes12()


def swap_seq_heads(x, transpose, on: bool):
    """(B, A, C, D) → (B, C, A, D): (B, S, N, D) into heads (B, N, S, D) and back. By the cell's
    `transpose` primitive (which the sharding strategies annotate) unless `on` (CPU)."""
    if on:
        return _SWAP(x)
    return transpose(x, (0, 2, 1, 3))
