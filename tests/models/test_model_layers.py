"""Building blocks in petrun.models.layers against numpy, in PyNative and GRAPH mode."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from tests.models import llama_np_reference as ref
from petrun.errors import UserError
from petrun.models.layers import (ApplyRotary, DotProductAttention, Embedding, Linear,
                                  MaskedCrossEntropy, RMSNorm, RotaryEmbedding, SwiGLU,
                                  causal_mask, rope_tables)

RNG = np.random.default_rng(1234)


def f32(*shape, scale=1.0):
    return (RNG.normal(0.0, scale, shape)).astype(np.float32)


def test_linear_contract_and_value(mode):
    lin = Linear(6, 4, has_bias=True, compute_dtype=ms.float32, param_init_type=ms.float32)
    assert (lin.in_channels, lin.out_channels, lin.has_bias) == (6, 4, True)
    assert lin.compute_dtype == ms.float32
    assert lin.weight.shape == (4, 6) and lin.bias.shape == (4,)
    assert np.all(lin.bias.asnumpy() == 0)  # biases start at zero
    w, b = f32(4, 6), f32(4)
    lin.weight.set_data(Tensor(w))
    lin.bias.set_data(Tensor(b))
    x = f32(2, 3, 6)
    np.testing.assert_allclose(lin(Tensor(x)).asnumpy(), x @ w.T + b, rtol=1e-5, atol=1e-5)


def test_linear_without_bias_computes_in_compute_dtype():
    lin = Linear(8, 5, compute_dtype=ms.float16, param_init_type=ms.float32)
    assert lin.bias is None and lin.weight.dtype == ms.float32
    x = f32(3, 8)
    out = lin(Tensor(x))
    assert out.dtype == ms.float16
    np.testing.assert_allclose(out.asnumpy(), x @ lin.weight.asnumpy().T, rtol=1e-2, atol=1e-2)


def test_embedding_lookup(mode):
    emb = Embedding(11, 4, param_init_type=ms.float32)
    assert [p.name for p in emb.get_parameters()] == ["embedding_weight"]
    ids = np.array([[0, 3, 10], [7, 7, 1]], np.int32)
    np.testing.assert_array_equal(emb(Tensor(ids)).asnumpy(), emb.embedding_weight.asnumpy()[ids])


def test_rmsnorm_matches_numpy(mode):
    norm = RMSNorm(16, eps=1e-5)
    assert np.all(norm.weight.asnumpy() == 1) and norm.weight.dtype == ms.float32
    w = 1.0 + f32(16, scale=0.3)
    norm.weight.set_data(Tensor(w))
    x = f32(2, 5, 16, scale=3.0)
    np.testing.assert_allclose(norm(Tensor(x)).asnumpy(), ref.rms_norm(x, w, 1e-5),
                               rtol=1e-5, atol=1e-5)


def test_rmsnorm_returns_input_dtype():
    x = f32(3, 16)
    out = RMSNorm(16, eps=1e-6)(Tensor(x, ms.float16))
    assert out.dtype == ms.float16
    np.testing.assert_allclose(out.asnumpy(), ref.rms_norm(x, 1.0, 1e-6), atol=5e-3)


@pytest.mark.parametrize("method,factor", [("None", 1.0), ("PI", 4.0), ("NTK", 4.0)])
def test_rope_tables(method, factor):
    d, n, theta = 8, 12, 500.0
    cos, sin = rope_tables(d, n, theta, method, factor)
    assert cos.shape == sin.shape == (n, d) and cos.dtype == np.float32
    pos = np.arange(n, dtype=np.float64)
    base = theta
    if method == "PI":
        pos = pos / factor
    if method == "NTK":
        base = theta * factor ** (d / (d - 2))
    want_cos, want_sin = ref.rope_cos_sin(n, d, base, positions=pos)
    np.testing.assert_allclose(cos, want_cos, atol=1e-6)
    np.testing.assert_allclose(sin, want_sin, atol=1e-6)
    if method != "None":  # the extension must actually change the table
        assert not np.allclose(cos, ref.rope_cos_sin(n, d, theta)[0])


def test_rope_rejects_unknown_extend_method():
    with pytest.raises(UserError) as err:
        rope_tables(8, 4, extend_method="YaRN")
    assert err.value.key == "model.model_config.extend_method"


def test_rotary_matches_hf_rotate_half(mode):
    b, n, s, d = 2, 3, 7, 8
    rotary = RotaryEmbedding(d, 16, theta=10000.0)
    x = f32(b, n, s, d)

    class Apply(nn.Cell):
        def __init__(self):
            super().__init__()
            self.apply_rotary = ApplyRotary()

        def construct(self, t):
            cos, sin = rotary(s)
            return self.apply_rotary(t, cos, sin)

    rotary_out = Apply()(Tensor(x)).asnumpy()
    cos, sin = ref.rope_cos_sin(s, d)
    np.testing.assert_allclose(rotary_out, ref.hf_apply_rotary(x, cos, sin), rtol=1e-5, atol=1e-5)


def test_rotary_scores_depend_only_on_relative_position():
    d = 8
    rotary = RotaryEmbedding(d, 32)
    cos, sin = rotary(32)
    q, k = f32(1, 1, 1, d), f32(1, 1, 1, d)
    apply_rotary = ApplyRotary()
    qs = apply_rotary(Tensor(np.repeat(q, 32, 2)), cos, sin).asnumpy()[0, 0]
    ks = apply_rotary(Tensor(np.repeat(k, 32, 2)), cos, sin).asnumpy()[0, 0]
    np.testing.assert_allclose(qs[5] @ ks[2], qs[20] @ ks[17], rtol=1e-4, atol=1e-5)
    assert abs(qs[5] @ ks[2] - qs[5] @ ks[4]) > 1e-3


def _attention_inputs(b, n, nkv, s, d):
    return f32(b, n, s, d), f32(b, nkv, s, d), f32(b, nkv, s, d)


@pytest.mark.parametrize("n,nkv", [(4, 4), (4, 2), (4, 1)])
def test_attention_causal_and_gqa(mode, n, nkv):
    b, s, d = 2, 5, 8
    q, k, v = _attention_inputs(b, n, nkv, s, d)
    mask = np.tril(np.ones((s, s), np.float32))[None, None]
    core = DotProductAttention(d, n, nkv)
    out = core(Tensor(q), Tensor(k), Tensor(v), Tensor(mask)).asnumpy()
    want = ref.attention(q.astype(np.float64), k, v, mask.astype(bool))
    assert out.shape == (b, n, s, d)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_attention_is_causal():
    b, n, s, d = 1, 2, 6, 4
    q, k, v = _attention_inputs(b, n, n, s, d)
    mask = Tensor(np.tril(np.ones((s, s), np.float32))[None, None])
    core = DotProductAttention(d, n)
    base = core(Tensor(q), Tensor(k), Tensor(v), mask).asnumpy()
    k2, v2 = k.copy(), v.copy()
    k2[:, :, 4:], v2[:, :, 4:] = 9.0, -9.0  # change only the future of positions 0..3
    changed = core(Tensor(q), Tensor(k2), Tensor(v2), mask).asnumpy()
    np.testing.assert_allclose(changed[:, :, :4], base[:, :, :4], atol=1e-6)
    assert not np.allclose(changed[:, :, 4:], base[:, :, 4:])


def test_attention_with_prefix_key_values(mode):
    b, n, nkv, s, d, p = 2, 4, 2, 5, 8, 3
    q, k, v = _attention_inputs(b, n, nkv, s, d)
    prefix = f32(2, b, nkv, p, d)
    mask = np.tril(np.ones((s, s), np.float32))[None, None]
    core = DotProductAttention(d, n, nkv)
    out = core(Tensor(q), Tensor(k), Tensor(v), Tensor(mask), Tensor(prefix)).asnumpy()
    want = ref.attention(q.astype(np.float64), k, v, mask.astype(bool), prefix)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    # The prefix really is seen, by the first query too.
    plain = core(Tensor(q), Tensor(k), Tensor(v), Tensor(mask)).asnumpy()
    assert np.abs(out[:, :, 0] - plain[:, :, 0]).max() > 1e-2


def test_causal_mask_hides_pad_keys():
    tokens = Tensor(np.array([[5, 6, 0, 0], [5, 0, 7, 8]], np.int32))
    mask = causal_mask(tokens, pad_token_id=0).asnumpy()
    want = np.tril(np.ones((4, 4)))[None, None] * (tokens.asnumpy() != 0)[:, None, None, :]
    np.testing.assert_array_equal(mask, want)


def test_attention_fully_masked_row_is_finite():
    q, k, v = _attention_inputs(1, 2, 2, 3, 4)
    mask = np.tril(np.ones((3, 3), np.float32))[None, None].copy()
    mask[..., 0, :] = 0
    out = DotProductAttention(4, 2)(Tensor(q), Tensor(k), Tensor(v), Tensor(mask)).asnumpy()
    assert np.all(np.isfinite(out))


def test_attention_rejects_bad_gqa_ratio():
    with pytest.raises(UserError):
        DotProductAttention(8, 6, 4)


def test_swiglu_matches_numpy(mode):
    ffn = SwiGLU(8, 12)
    assert sorted(p.name for p in ffn.get_parameters()) == ["w1.weight", "w2.weight", "w3.weight"]
    assert ffn.w2.weight.shape == (8, 12) and ffn.w1.weight.shape == (12, 8)
    w1, w2, w3 = f32(12, 8), f32(8, 12), f32(12, 8)
    for lin, w in ((ffn.w1, w1), (ffn.w2, w2), (ffn.w3, w3)):
        lin.weight.set_data(Tensor(w))
    x = f32(2, 3, 8)
    want = (ref.silu(x @ w1.T) * (x @ w3.T)) @ w2.T
    np.testing.assert_allclose(ffn(Tensor(x)).asnumpy(), want, rtol=1e-5, atol=1e-5)


def test_masked_cross_entropy(mode):
    logits = f32(2, 4, 7, scale=2.0)
    targets = np.array([[1, -100, 3, 6], [0, 2, -100, 5]], np.int32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    loss = MaskedCrossEntropy(-100)(Tensor(logits), Tensor(targets), Tensor(mask)).asnumpy()
    z = logits.astype(np.float64)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    keep = (targets != -100) & mask
    nll = -np.take_along_axis(logp, np.where(keep, targets, 0)[..., None], -1)[..., 0]
    want = (nll * keep).sum() / keep.sum()
    assert loss.dtype == np.float32 and loss.shape == ()
    np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_masked_cross_entropy_all_ignored_is_zero():
    loss = MaskedCrossEntropy(-100)(Tensor(f32(1, 3, 5)), Tensor(np.full((1, 3), -100, np.int32)))
    assert float(loss.asnumpy()) == 0.0


def test_layernorm_matches_numpy_with_mindformers_names(mode):
    from petrun.models.layers import LayerNorm
    from tests.models.gpt2_np_reference import layer_norm

    norm = LayerNorm(16, eps=1e-5)
    assert [p.name for p in norm.get_parameters()] == ["gamma", "beta"]
    assert np.all(norm.gamma.asnumpy() == 1) and np.all(norm.beta.asnumpy() == 0)
    g, b = 1.0 + f32(16, scale=0.3), f32(16, scale=0.3)
    norm.gamma.set_data(Tensor(g))
    norm.beta.set_data(Tensor(b))
    x = f32(2, 5, 16, scale=3.0)
    np.testing.assert_allclose(norm(Tensor(x)).asnumpy(), layer_norm(x, g, b), rtol=1e-5, atol=1e-5)
    assert norm(Tensor(x, ms.float16)).dtype == ms.float16


def test_attention_dropout_only_while_training():
    att = DotProductAttention(8, 2, attention_dropout=0.5)
    q, k, v = (Tensor(f32(1, 2, 6, 8)) for _ in range(3))
    mask = Tensor(np.tril(np.ones((1, 1, 6, 6), np.float32)))
    att.set_train(False)
    first = att(q, k, v, mask).asnumpy()
    np.testing.assert_array_equal(first, att(q, k, v, mask).asnumpy())
    np.testing.assert_allclose(first, DotProductAttention(8, 2)(q, k, v, mask).asnumpy(),
                               rtol=1e-6, atol=1e-6)
    att.set_train(True)
    assert not np.allclose(att(q, k, v, mask).asnumpy(), first)
