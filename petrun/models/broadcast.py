"""Binary ops fed inputs of the output's shape, where MindSpore's CPU kernels need it.

MindSpore 2.10's CPU kernel for a broadcasting binary op (Add, Sub, Mul whose inputs differ in
shape) builds two int64 index tables the size of its output and keeps them for the whole run:
16 bytes an element, four times an fp32 output, for every such op in the graph. A small Llama's
LoRA step held 2 GiB of them in a 4.2 GiB peak RSS (benchmarks/RESULTS.md, experiment 20). A
BroadcastTo output is an ordinary tensor of the memory pool, freed and reused after its last use,
so on CPU (KernelChoice.full_broadcast) the composite cells broadcast first; elsewhere they keep
the implicit broadcast, which Ascend's kernels and the sharding strategies expect.
"""
from __future__ import annotations

from mindspore import ops


def to_shape_of(small, like, on: bool):
    """`small` broadcast to `like`'s shape when `on` (a cell's constant flag), else itself."""
    return ops.broadcast_to(small, like.shape) if on else small
