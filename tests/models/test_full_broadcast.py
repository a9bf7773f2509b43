"""On CPU the composite cells broadcast their small operands before Add/Sub/Mul
(KernelChoice.full_broadcast, petrun/models/broadcast.py): MindSpore's CPU broadcasting kernels
keep output-sized int64 index tables for the whole run, half of a small Llama's peak RSS
(benchmarks/RESULTS.md, experiment 20). What must hold: the numbers are the same bits with and
without it (outputs and gradients, graph mode), and CPU builds switch it on, other devices not.
The same for the head layout swap by a row Gather (KernelChoice.gather_heads): the CPU
Transpose kernel keeps an output-sized index table as well (experiment 26)."""
import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import Tensor, nn, ops  # noqa: E402

from petrun.models.attention_core import SoftmaxAttention  # noqa: E402
from petrun.models.broadcast import swap_seq_heads  # noqa: E402
from petrun.models.glm2 import InterleavedRotary, glm2_rope_tables  # noqa: E402
from petrun.models.kernels import kernels_for  # noqa: E402
from petrun.models.layers import ApplyRotary, RMSNorm, rope_tables  # noqa: E402
from tests.infer import infer_helpers as ih  # noqa: E402

FLAGGED = {"llama2": (RMSNorm, ApplyRotary, SoftmaxAttention),
           "glm2": (RMSNorm, InterleavedRotary, SoftmaxAttention)}


class Loss(nn.Cell):
    """sum(cell(*inputs) * w), so every output element gets its own gradient."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def construct(self, w, *inputs):
        return (self.cell(*inputs) * w).sum()


def outputs_and_grads(cell, inputs, flag: bool):
    ms.set_context(mode=ms.GRAPH_MODE)
    cell.full_broadcast = flag
    out = cell(*inputs)
    w = Tensor(np.random.default_rng(1).normal(size=out.shape).astype(np.float32))
    grads = ops.GradOperation(get_all=True)(Loss(cell))(w, *inputs)
    return [out.asnumpy()] + [g.asnumpy() for g in grads[1:]]


def rng_tensor(shape, seed):
    return Tensor(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def glm2_tables():
    """GLM2 rotates the first half of the head: (1, 1, S, 4) tables for head_dim 8."""
    return tuple(Tensor(t[:16].reshape(1, 1, 16, 4)) for t in glm2_rope_tables(4, 16))


def cases():
    cos, sin = (Tensor(t[:16].reshape(1, 1, 16, 8)) for t in rope_tables(8, 16))
    causal = np.tril(np.ones((16, 16), bool))
    bias = Tensor(np.where(causal, 0.0, np.finfo(np.float32).min).astype(np.float32)[None, None])
    return [
        ("rmsnorm", lambda: RMSNorm(12), (rng_tensor((2, 5, 12), 0),)),
        ("rotary", ApplyRotary, (rng_tensor((2, 3, 16, 8), 2), cos, sin)),
        ("glm2 rotary", InterleavedRotary, (rng_tensor((2, 3, 16, 8), 6), *glm2_tables())),
        ("attention core", lambda: SoftmaxAttention(8 ** -0.5),
         (rng_tensor((2, 3, 16, 8), 3), rng_tensor((2, 3, 16, 8), 4),
          rng_tensor((2, 3, 16, 8), 5), bias)),
    ]


@pytest.mark.parametrize("name,make,inputs", cases(), ids=lambda c: c if isinstance(c, str) else "")
def test_the_same_bits_with_and_without_broadcasting_first(name, make, inputs):
    implicit = outputs_and_grads(make(), inputs, False)
    explicit = outputs_and_grads(make(), inputs, True)
    for a, b in zip(implicit, explicit):
        assert np.array_equal(a, b), name
    assert any(np.abs(g).max() > 0 for g in implicit[1:]), "all-zero gradients test nothing"


@pytest.mark.parametrize("family", sorted(FLAGGED))
def test_cpu_builds_switch_it_on_and_other_devices_do_not(family):
    assert kernels_for(family, None, "CPU").full_broadcast
    assert not kernels_for(family, None, "GPU").full_broadcast
    net = ih.petrun_model(family, seed=0)     # built on this CPU
    flagged = [c for _, c in net.cells_and_names() if isinstance(c, FLAGGED[family])]
    assert {type(c) for c in flagged} == set(FLAGGED[family])
    assert all(c.full_broadcast for c in flagged)


class SwapHeads(nn.Cell):
    gather_heads = False

    def __init__(self):
        super().__init__()
        self.transpose = ops.Transpose()

    def construct(self, x):
        return swap_seq_heads(x, self.transpose, self.gather_heads)


@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (2, 1, 4, 8), (1, 6, 1, 2)])   # decode, MQA
def test_the_head_swap_is_a_transpose_without_transpose(shape):
    x = rng_tensor(shape, 7)
    results = []
    for flag in (False, True):
        ms.set_context(mode=ms.GRAPH_MODE)
        cell = SwapHeads()
        cell.gather_heads = flag
        out = cell(x)
        w = rng_tensor(out.shape, 8)
        grad = ops.GradOperation(get_all=True)(Loss(cell))(w, x)[1]
        results.append((out.asnumpy(), grad.asnumpy(), w.asnumpy()))
    (out, grad, w), (out_s, grad_s, w_s) = results
    assert np.array_equal(out, np.transpose(x.asnumpy(), (0, 2, 1, 3)))    # numpy's transpose
    assert np.array_equal(grad, np.transpose(w, (0, 2, 1, 3)))
    assert np.array_equal(out_s, out) and np.array_equal(grad_s, grad)


@pytest.mark.parametrize("family", ["llama2", "glm2", "gpt2"])
def test_cpu_attention_cells_swap_heads_by_gather(family):
    assert kernels_for(family, None, "CPU").gather_heads
    assert not kernels_for(family, None, "GPU").gather_heads
    net = ih.petrun_model(family, seed=0)     # built on this CPU
    cells = [c for _, c in net.cells_and_names() if hasattr(c, "merge_heads")]
    assert cells and all(c.gather_heads for c in cells)
