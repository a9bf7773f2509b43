"""LlamaForCausalLM: names/shapes, numpy parity of logits and loss, dtypes, graph mode, training."""
import logging

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from petrun.errors import UserError
from petrun.models.configs import LlamaConfig
from petrun.models.dtypes import resolve_dtypes
from petrun.models.layers import Linear
from petrun.models.llama import LlamaForCausalLM
from tests.models import llama_np_reference as ref
from tests.models.model_helpers import params_np, randomize, tiny_config


def _ids(cfg, batch=2, seq=8, seed=0, low=1):
    return np.random.default_rng(seed).integers(low, cfg.vocab_size, (batch, seq)).astype(np.int32)


def _net(cfg, seed=0, scale=0.2):
    net = LlamaForCausalLM(cfg)
    randomize(net, seed, scale)
    return net


def test_parameter_names_and_shapes():
    cfg = tiny_config(num_heads=4, n_kv_heads=None)  # hidden 32, head_dim 8
    ffn = cfg.ffn_hidden_size
    net = LlamaForCausalLM(cfg)
    want = [("model.tok_embeddings.embedding_weight", (97, 32))]
    for i in range(2):
        p = f"model.layers.{i}."
        want += [(p + "attention_norm.weight", (32,)),
                 (p + "attention.wq.weight", (32, 32)), (p + "attention.wk.weight", (32, 32)),
                 (p + "attention.wv.weight", (32, 32)), (p + "attention.wo.weight", (32, 32)),
                 (p + "ffn_norm.weight", (32,)),
                 (p + "feed_forward.w1.weight", (ffn, 32)),
                 (p + "feed_forward.w3.weight", (ffn, 32)),
                 (p + "feed_forward.w2.weight", (32, ffn))]
    want += [("model.norm_out.weight", (32,)), ("lm_head.weight", (97, 32))]
    assert [(p.name, tuple(p.shape)) for p in net.get_parameters()] == want
    # parameters_and_names (used by checkpoint code) agrees with Parameter.name.
    assert all(name == p.name for name, p in net.parameters_and_names())


def test_projections_are_linear_cells():
    net = LlamaForCausalLM(tiny_config())
    layer = net.model.layers[0]
    for cell in (layer.attention.wq, layer.attention.wk, layer.attention.wv, layer.attention.wo,
                 layer.feed_forward.w1, layer.feed_forward.w2, layer.feed_forward.w3, net.lm_head):
        assert isinstance(cell, Linear)


def test_initialisation():
    net = LlamaForCausalLM(tiny_config(init_method_std=0.05, qkv_has_bias=True,
                                       vocab_size=500, hidden_size=64))
    P = params_np(net)
    emb = P["model.tok_embeddings.embedding_weight"]
    assert abs(emb.mean()) < 0.01 and abs(emb.std() - 0.05) < 0.005
    assert abs(P["lm_head.weight"].std() - 0.05) < 0.005
    assert np.all(P["model.layers.0.attention_norm.weight"] == 1)
    assert np.all(P["model.layers.0.attention.wq.bias"] == 0)


def test_optional_biases():
    net = LlamaForCausalLM(tiny_config(qkv_has_bias=True, attn_proj_has_bias=True))
    shapes = {p.name: tuple(p.shape) for p in net.get_parameters()}
    assert shapes["model.layers.1.attention.wq.bias"] == (32,)
    assert shapes["model.layers.1.attention.wk.bias"] == (16,)
    assert shapes["model.layers.1.attention.wv.bias"] == (16,)
    assert shapes["model.layers.1.attention.wo.bias"] == (32,)
    assert not any("feed_forward" in n and n.endswith(".bias") for n in shapes)


def test_gqa_shapes_70b_like():
    cfg = tiny_config(hidden_size=64, num_heads=8, n_kv_heads=2, ffn_dim_multiplier=1.3,
                      multiple_of=32)
    shapes = {p.name: tuple(p.shape) for p in LlamaForCausalLM(cfg).get_parameters()}
    assert shapes["model.layers.0.attention.wq.weight"] == (64, 64)
    assert shapes["model.layers.0.attention.wk.weight"] == (2 * 8, 64)
    assert shapes["model.layers.0.attention.wv.weight"] == (2 * 8, 64)
    assert shapes["model.layers.0.attention.wo.weight"] == (64, 64)
    # 4*64=256 → int(1.31*256)=335 → int(2/3*335)=223 → round up to 32 → 224
    assert shapes["model.layers.0.feed_forward.w1.weight"] == (224, 64)
    assert shapes["model.layers.0.feed_forward.w2.weight"] == (64, 224)


@pytest.mark.parametrize("hidden,mult,multiple_of,want", [
    (4096, None, 256, 11008), (5120, None, 256, 13824), (8192, 1.3, 256, 28672),
    (32, None, 16, 96), (48, None, 64, 128)])
def test_ffn_rule(hidden, mult, multiple_of, want):
    cfg = LlamaConfig(hidden_size=hidden, ffn_dim_multiplier=mult, multiple_of=multiple_of)
    assert cfg.ffn_hidden_size == want


def test_intermediate_size_overrides_ffn_rule():
    net = LlamaForCausalLM(tiny_config(intermediate_size=40))
    assert net.model.layers[0].feed_forward.w1.weight.shape == (40, 32)


def test_logits_match_numpy_reference():
    cfg = tiny_config(qkv_has_bias=True, attn_proj_has_bias=True)
    net = _net(cfg)
    ids = _ids(cfg)
    ids[1, 5] = cfg.pad_token_id  # a pad in the middle is hidden as a key for later positions
    logits = net(Tensor(ids))
    assert logits.dtype == ms.float32 and logits.shape == (2, 8, 97)
    want = ref.llama_forward(params_np(net), cfg, ids)
    np.testing.assert_allclose(logits.asnumpy(), want, rtol=1e-4, atol=1e-4)
    assert np.abs(want).max() > 1.0  # the reference is not trivially near zero


def test_tied_embeddings():
    cfg = tiny_config(tie_word_embeddings=True)
    net = _net(cfg)
    names = [p.name for p in net.get_parameters()]
    assert "lm_head.weight" not in names and names[0] == "model.tok_embeddings.embedding_weight"
    ids = _ids(cfg)
    np.testing.assert_allclose(net(Tensor(ids)).asnumpy(),
                               ref.llama_forward(params_np(net), cfg, ids), rtol=1e-4, atol=1e-4)


def test_loss_matches_numpy_with_ignore_and_pad():
    cfg = tiny_config()
    net = _net(cfg, seed=1)
    input_ids = _ids(cfg, batch=3, seq=9, seed=3)
    input_ids[1, 6:] = cfg.pad_token_id  # right padding
    labels = input_ids.copy()
    labels[:, :3] = -100  # a masked prompt
    labels[2, 5] = -100
    loss = net(Tensor(input_ids), Tensor(labels))
    assert loss.dtype == ms.float32 and loss.shape == ()
    P = params_np(net)
    want = ref.llama_loss(P, cfg, input_ids, labels)
    np.testing.assert_allclose(float(loss.asnumpy()), want, rtol=1e-5)
    # Both masks matter for this batch, so the comparison above would catch a missing one.
    assert abs(want - ref.llama_loss(P, cfg, input_ids, labels, use_pad_mask=False)) > 1e-3
    no_ignore = np.where(labels == -100, input_ids, labels)
    assert abs(want - ref.llama_loss(P, cfg, input_ids, no_ignore)) > 1e-3


def test_prefix_key_values_match_numpy(mode):
    cfg = tiny_config()
    net = _net(cfg, seed=2)
    ids = _ids(cfg, seed=4)
    rng = np.random.default_rng(5)
    prefix = [rng.normal(0, 1, (2, 2, cfg.kv_heads, 3, cfg.head_dim)).astype(np.float32)
              for _ in range(cfg.num_layers)]
    logits = net(Tensor(ids), None, tuple(Tensor(p) for p in prefix)).asnumpy()
    P = params_np(net)
    np.testing.assert_allclose(logits, ref.llama_forward(P, cfg, ids, prefix),
                               rtol=1e-4, atol=1e-4)
    assert np.abs(logits - ref.llama_forward(P, cfg, ids)).max() > 1e-2


def test_graph_and_pynative_logits_agree():
    cfg = tiny_config()
    net = _net(cfg, seed=3)
    ids = Tensor(_ids(cfg, seed=6))
    ms.set_context(mode=ms.PYNATIVE_MODE)
    eager = net(ids).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        graph = net(ids).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(graph, eager, rtol=1e-6, atol=1e-6)


def test_bf16_falls_back_to_fp32_on_cpu(caplog):
    cfg = tiny_config(compute_dtype="bfloat16", param_init_type="bfloat16",
                      layernorm_compute_type="float32")
    with caplog.at_level(logging.WARNING, logger="petrun"):
        net = LlamaForCausalLM(cfg, device_target="CPU")
    warnings = [r for r in caplog.records if r.name == "petrun" and "bfloat16" in r.getMessage()]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "compute_dtype" in message and "param_init_type" in message
    assert "float32" in message and "Ascend" in message
    assert all(p.dtype == ms.float32 for p in net.get_parameters())
    logits = net(Tensor(_ids(cfg)))
    assert logits.shape == (2, 8, 97) and np.all(np.isfinite(logits.asnumpy()))


def test_bf16_kept_on_ascend(caplog):
    with caplog.at_level(logging.WARNING, logger="petrun"):
        dtypes = resolve_dtypes({"compute_dtype": "bfloat16", "param_init_type": "fp16"},
                                device_target="Ascend")
    assert dtypes == {"compute_dtype": ms.bfloat16, "param_init_type": ms.float16}
    assert not [r for r in caplog.records if r.name == "petrun"]


def test_unknown_dtype_is_a_user_error():
    with pytest.raises(UserError) as err:
        LlamaForCausalLM(tiny_config(compute_dtype="float8"))
    assert err.value.key == "model.model_config.compute_dtype"


def test_fp16_compute_runs_and_tracks_fp32(caplog):
    cfg32 = tiny_config()
    net32 = _net(cfg32, seed=4, scale=0.1)
    cfg16 = tiny_config(compute_dtype="float16", param_init_type="float16")
    with caplog.at_level(logging.WARNING, logger="petrun"):
        net16 = LlamaForCausalLM(cfg16)
    assert not [r for r in caplog.records if r.name == "petrun"]  # fp16 is kept, silently
    dtypes = {p.name: p.dtype for p in net16.get_parameters()}
    assert dtypes["model.layers.0.attention.wq.weight"] == ms.float16
    assert dtypes["model.layers.0.attention_norm.weight"] == ms.float32  # layernorm_compute_type
    ms.load_param_into_net(net16, {p.name: Parameter(Tensor(p.asnumpy()), name=p.name)
                                   for p in net32.get_parameters()})
    ids = Tensor(_ids(cfg32, seed=7))
    out16 = net16(ids)
    assert out16.dtype == ms.float32
    np.testing.assert_allclose(out16.asnumpy(), net32(ids).asnumpy(), atol=3e-2)


@pytest.mark.parametrize("overrides,key", [
    (dict(hidden_size=30, num_heads=4), "model.model_config.num_heads"),
    (dict(num_heads=4, n_kv_heads=3), "model.model_config.n_kv_heads"),
    (dict(qkv_concat=True), "model.model_config.qkv_concat")])
def test_invalid_shapes_are_user_errors(overrides, key):
    with pytest.raises(UserError) as err:
        LlamaForCausalLM(tiny_config(**overrides))
    assert err.value.key == key


def _train(net, trainable, inputs, steps, lr):
    step = nn.TrainOneStepCell(net, nn.AdamWeightDecay(trainable, learning_rate=lr,
                                                       weight_decay=0.0))
    step.set_train()
    return [float(step(*inputs).asnumpy()) for _ in range(steps)]


def test_training_reduces_loss_in_graph_mode(graph_mode):
    ms.set_seed(0)
    cfg = tiny_config()
    net = LlamaForCausalLM(cfg)
    ids = _ids(cfg, batch=4, seq=9, seed=8)
    labels = ids.copy()
    labels[:, :2] = -100
    losses = _train(net, net.trainable_params(), (Tensor(ids), Tensor(labels)), 6, 1e-2)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 1.0, losses  # 4.58 → 2.33 when written


class _PrefixTuned(nn.Cell):
    """A stand-in for P-Tuning v2: a trainable prefix fed through the model's hook.

    auto_prefix=False, as MindFormers' PET wrappers do: otherwise MindSpore renames every base
    parameter to "base.model..." (Parameter.name itself changes), breaking checkpoint names.
    """

    def __init__(self, base, cfg, batch, prefix_len):
        super().__init__(auto_prefix=False)
        self.base = base
        shape = (cfg.num_layers, 2, batch, cfg.kv_heads, prefix_len, cfg.head_dim)
        self.prefix = Parameter(Tensor(np.random.default_rng(0).normal(0, 0.5, shape),
                                       ms.float32), name="prefix")

    def construct(self, input_ids, labels):
        return self.base(input_ids, labels, self.prefix)


def test_prefix_hook_trains_in_graph_mode(graph_mode):
    cfg = tiny_config()
    base = _net(cfg, seed=5, scale=0.1)
    for p in base.get_parameters():
        p.requires_grad = False
    frozen = params_np(base)
    net = _PrefixTuned(base, cfg, batch=2, prefix_len=4)
    assert [p.name for p in base.get_parameters()] == list(frozen)  # names survive wrapping
    assert [p.name for p in net.trainable_params()] == ["prefix"]
    ids = _ids(cfg, batch=2, seq=9, seed=9)
    losses = _train(net, net.trainable_params(), (Tensor(ids), Tensor(ids)), 5, 5e-2)
    assert losses[-1] < losses[0] - 0.4, losses  # 4.63 → 3.76 when written
    assert all(np.array_equal(v, frozen[k]) for k, v in params_np(base).items())
