"""The hand-written backward pass of the fp32 attention core (petrun/models/attention_core.py)
against MindSpore's own autodiff of the plain formula softmax(q kᵀ·scale + bias) v."""
import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import Tensor, nn, ops  # noqa: E402

from petrun.models.attention_core import SoftmaxAttention  # noqa: E402

LOW = float(np.finfo(np.float32).min)


class Plain(nn.Cell):
    """The formula written with autodiff'd ops; `mask` (optional) is a fixed dropout mask."""

    def __init__(self, scale, keep=1.0):
        super().__init__()
        self.scale, self.keep = scale, keep

    def construct(self, q, k, v, bias, mask=None):
        p = ops.softmax(ops.matmul(q, ops.swapaxes(k, -1, -2)) * self.scale + bias, -1)
        if mask is not None:
            p = p * mask / self.keep
        return ops.matmul(p, v)


class Weighted(nn.Cell):
    """sum(core(...) * w): a loss whose gradient reaches every output element differently."""

    def __init__(self, core, dropping=False):
        super().__init__()
        self.core, self.dropping = core, dropping

    def construct(self, q, k, v, bias, w, mask=None):
        out = self.core(q, k, v, bias) if mask is None else self.core(q, k, v, bias, mask)
        if self.dropping:
            out = out[0]
        return (out * w).sum()


def _inputs(b, n, s, s_keys, d, seed=0, pad=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(shape).astype(np.float32)
               for shape in ((b, n, s, d), (b, n, s_keys, d), (b, n, s_keys, d)))
    allowed = np.tril(np.ones((s, s_keys), bool), k=s_keys - s)   # causal, prefix keys visible
    allowed = np.broadcast_to(allowed, (b, 1, s, s_keys)).copy()
    if pad:
        allowed[0, :, :, s_keys - pad:] = False    # the first row's last keys are padding
        allowed[0, :, s - pad:, :] = True          # ...and its padded queries see everything
    bias = np.where(allowed, 0.0, LOW).astype(np.float32)
    w = rng.standard_normal((b, n, s, d)).astype(np.float32)
    return [Tensor(x) for x in (q, k, v, bias, w)]


def _grads(net, *args):
    return [g.asnumpy() for g in ops.GradOperation(get_all=True)(net)(*args)[:3]]


@pytest.mark.parametrize("shape", [(2, 3, 8, 8, 16), (1, 2, 6, 10, 8)], ids=["causal", "prefix"])
@pytest.mark.parametrize("pad", [0, 2])
def test_gradients_equal_autodiff_of_the_formula(shape, pad, mode):
    *_, d = shape
    scale = 1.0 / np.sqrt(d)
    q, k, v, bias, w = _inputs(*shape, pad=pad)
    core = SoftmaxAttention(scale)
    np.testing.assert_array_equal(core(q, k, v, bias).asnumpy(),
                                  Plain(scale)(q, k, v, bias).asnumpy())
    ours = _grads(Weighted(core), q, k, v, bias, w)
    oracle = _grads(Weighted(Plain(scale)), q, k, v, bias, w)
    for name, a, b in zip("qkv", ours, oracle):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"d{name}")
        assert np.abs(b).max() > 1e-3, f"d{name} is trivially zero"


def test_dropout_gradients_use_the_forward_mask():
    scale = 0.25
    q, k, v, bias, w = _inputs(2, 2, 8, 8, 16, seed=1)
    core = SoftmaxAttention(scale, attention_dropout=0.3)
    core.set_train(True)
    out, mask = core(q, k, v, bias)
    assert 0 < mask.asnumpy().mean() < 1           # some probabilities really were dropped
    np.testing.assert_allclose(out.asnumpy(), Plain(scale, 0.7)(q, k, v, bias, mask).asnumpy(),
                               rtol=1e-6, atol=1e-6)

    class Fixed(nn.Cell):   # the core's backward, evaluated for this forward's mask
        def __init__(self):
            super().__init__()
            self.core = core

        def bprop_at(self, *args):
            return self.core.bprop(*args)

    dout = (w, ops.zeros_like(mask))
    d_q, d_k, d_v, _ = Fixed().bprop_at(q, k, v, bias, (out, mask), dout)
    oracle = _grads(Weighted(Plain(scale, 0.7)), q, k, v, bias, w, mask)
    for name, a, b in zip("qkv", (d_q, d_k, d_v), oracle):
        np.testing.assert_allclose(a.asnumpy(), b, rtol=1e-5, atol=1e-6, err_msg=f"d{name}")


def test_evaluation_drops_nothing():
    q, k, v, bias, _ = _inputs(1, 2, 6, 6, 8)
    core = SoftmaxAttention(0.5, attention_dropout=0.5)
    core.set_train(False)
    assert not core.dropping()
    np.testing.assert_array_equal(core(q, k, v, bias).asnumpy(),
                                  Plain(0.5)(q, k, v, bias).asnumpy())


def test_dropout_masks_follow_the_seed(graph_mode):
    """As nn.Dropout: the same ms.set_seed before building gives the same masks (an unseeded
    ops.Dropout draws different ones in every instance and process), in the composite attention
    that uses the core."""
    from petrun.models.layers import DotProductAttention
    q, k, v, _, _ = _inputs(2, 2, 8, 8, 16, seed=2)
    mask = Tensor(np.tril(np.ones((8, 8), np.float32))[None, None])
    outs = []
    for _ in range(2):
        ms.set_seed(7)
        attn = DotProductAttention(16, 2, attention_dropout=0.4)
        attn.set_train(True)
        assert attn.fast_core is not None and attn.fast_core.dropping()
        outs.append(attn(q, k, v, mask).asnumpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    attn.set_train(False)
    assert not np.array_equal(outs[0], attn(q, k, v, mask).asnumpy())   # something was dropped
