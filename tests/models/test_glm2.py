"""ChatGLM2ForConditionalGeneration: names/shapes, numpy parity of logits and (pre-shifted) loss,
the prefix hook, both execution modes, LoRA targeting, and the options petrun refuses.
(Training runs through the real CLI in tests/integration/test_lora_families_cli.py.)"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from petrun.errors import UserError
from petrun.models import arch_entry, build_base_model
from petrun.models.configs import ChatGLM2Config
from petrun.models.glm2 import ChatGLM2ForConditionalGeneration, glm2_rope_tables
from petrun.models.layers import Linear
from petrun.pet import apply_pet
from tests.models import glm2_np_reference as ref
from tests.models.model_helpers import params_np, randomize


def tiny(**overrides) -> ChatGLM2Config:
    """2 layers, hidden 32, 4 heads of 8 with 2 KV groups, ffn 40, vocab 97, fp32."""
    values = dict(num_layers=2, padded_vocab_size=97, hidden_size=32, ffn_hidden_size=40,
                  kv_channels=8, num_attention_heads=4, multi_query_group_num=2, seq_length=16,
                  rope_ratio=0.05, compute_dtype="float32", param_init_type="float32")
    values.update(overrides)
    return ChatGLM2Config(**values)


def _net(cfg, seed=0):
    net = ChatGLM2ForConditionalGeneration(cfg)
    randomize(net, seed)
    return net


def _ids(batch=2, seq=9, seed=0, vocab=97):
    return np.random.default_rng(seed).integers(0, vocab, (batch, seq)).astype(np.int32)


def test_parameter_names_and_shapes_follow_mindformers():
    net = ChatGLM2ForConditionalGeneration(tiny())
    want = [("transformer.embedding.embedding_weight", (97, 32))]
    for i in range(2):
        p = f"transformer.encoder.layers.{i}."
        want += [(p + "input_layernorm.weight", (32,)),
                 (p + "self_attention.query_key_value.weight", (32 + 2 * 2 * 8, 32)),
                 (p + "self_attention.query_key_value.bias", (64,)),
                 (p + "self_attention.dense.weight", (32, 32)),
                 (p + "post_attention_layernorm.weight", (32,)),
                 (p + "mlp.dense_h_to_4h.weight", (80, 32)),
                 (p + "mlp.dense_4h_to_h.weight", (32, 40))]
    want += [("transformer.encoder.final_layernorm.weight", (32,)),
             ("transformer.output_layer.weight", (97, 32))]
    assert [(p.name, tuple(p.shape)) for p in net.get_parameters()] == want


def test_6b_shapes_from_defaults():
    cfg = ChatGLM2Config()
    assert (cfg.vocab, cfg.kv_heads, cfg.head_dim) == (65024, 2, 128)
    # glm2-6b: query_key_value [4608, 4096], dense_h_to_4h [27392, 4096] (mindformers.md §6.2)
    assert cfg.num_attention_heads * cfg.head_dim + 2 * cfg.kv_heads * cfg.head_dim == 4608
    assert 2 * cfg.ffn_hidden_size == 27392


def test_rope_tables_repeat_each_frequency_for_a_pair():
    cos, sin = glm2_rope_tables(8, 5, base=100.0)
    assert cos.shape == (5, 8)
    np.testing.assert_array_equal(cos[:, 0::2], cos[:, 1::2])
    np.testing.assert_allclose(sin[3, 2], np.sin(3 * 100.0 ** (-2 / 8)), rtol=1e-6)


def test_logits_match_numpy_reference(mode):
    cfg = tiny()
    net = _net(cfg)
    ids = _ids()
    ids[1, 4] = cfg.pad_token_id   # GLM2 builds no padding mask: a 0 token is just a token
    logits = net(Tensor(ids))
    assert logits.dtype == ms.float32 and logits.shape == (2, 9, 97)
    want = ref.glm2_forward(params_np(net), cfg, ids)
    np.testing.assert_allclose(logits.asnumpy(), want, rtol=1e-4, atol=1e-4)
    assert np.abs(want).max() > 1.0


def test_rotary_uses_pairs_not_halves(monkeypatch):
    """A reference rotating (j, j + rot/2) pairs must disagree, so the layout is really tested."""
    cfg = tiny()
    net = _net(cfg, seed=1)
    ids = _ids(seed=1)

    def rotate_half_layout(x, base):
        rot = x.shape[-1] // 2
        half = rot // 2
        inv = 1.0 / base ** (np.arange(0, rot, 2, dtype=np.float64) / rot)
        phase = np.exp(1j * np.outer(np.arange(x.shape[2]), inv))
        z = (x[..., :half] + 1j * x[..., half:rot]) * phase
        out = x.copy()
        out[..., :half], out[..., half:rot] = z.real, z.imag
        return out

    monkeypatch.setattr(ref, "rotary", rotate_half_layout)
    wrong = ref.glm2_forward(params_np(net), cfg, ids)
    assert np.abs(net(Tensor(ids)).asnumpy() - wrong).max() > 1e-2


def test_loss_uses_preshifted_labels():
    cfg = tiny()
    net = _net(cfg, seed=2)
    ids = _ids(batch=3, seq=10, seed=3)
    labels = _ids(batch=3, seq=10, seed=4)
    labels[:, :3] = -100
    labels[2, 7:] = -100
    loss = net(Tensor(ids), Tensor(labels))
    assert loss.dtype == ms.float32 and loss.shape == ()
    want = ref.glm2_loss(params_np(net), cfg, ids, labels)
    np.testing.assert_allclose(float(loss.asnumpy()), want, rtol=1e-5)


def test_prefix_key_values_match_numpy(mode):
    cfg = tiny()
    net = _net(cfg, seed=3)
    ids = _ids(seed=5)
    rng = np.random.default_rng(6)
    prefix = [rng.normal(0, 1, (2, 2, cfg.kv_heads, 3, cfg.head_dim)).astype(np.float32)
              for _ in range(cfg.num_layers)]
    logits = net(Tensor(ids), None, tuple(Tensor(p) for p in prefix)).asnumpy()
    P = params_np(net)
    np.testing.assert_allclose(logits, ref.glm2_forward(P, cfg, ids, prefix), rtol=1e-4, atol=1e-4)
    assert np.abs(logits - ref.glm2_forward(P, cfg, ids)).max() > 1e-2


def test_without_multi_query_attention_heads_interleave_qkv():
    cfg = tiny(multi_query_attention=False)
    net = _net(cfg, seed=4)
    w = net.transformer.encoder.layers[0].self_attention.query_key_value.weight
    assert w.shape == (3 * 32, 32)
    # MindFormers' non-MQA layout is [q_h | k_h | v_h] per head; permute to [q | k | v] for numpy.
    n, d = 4, 8
    order = np.concatenate([np.arange(h * 3 * d + j * d, h * 3 * d + (j + 1) * d)
                            for j in range(3) for h in range(n)])
    P = params_np(net)
    for i in range(2):
        for kind in ("weight", "bias"):
            key = f"transformer.encoder.layers.{i}.self_attention.query_key_value.{kind}"
            P[key] = P[key][order]
    ids = _ids(seed=7)
    np.testing.assert_allclose(net(Tensor(ids)).asnumpy(),
                               ref.glm2_forward(P, tiny(multi_query_group_num=4), ids),
                               rtol=1e-4, atol=1e-4)


def test_registry_builds_it_with_shifted_data():
    section = {"arch": {"type": "ChatGLM2ForConditionalGeneration"},
               "model_config": {"type": "ChatGLM2Config", "num_layers": 1,
                                "padded_vocab_size": 50, "hidden_size": 32, "kv_channels": 8,
                                "ffn_hidden_size": 40, "num_attention_heads": 4,
                                "compute_dtype": "float32", "param_init_type": "float32",
                                "layernorm_epsilon": "1e-5", "pre_seq_len": "None"}}
    net = build_base_model(section, device_target="CPU")
    assert isinstance(net, ChatGLM2ForConditionalGeneration)
    assert net.config.layernorm_epsilon == 1e-5 and net.config.pre_seq_len is None
    # GLM2 data are seq_length long (labels pre-shifted); MindFormers' P-Tuning arch is accepted.
    assert arch_entry("ChatGLM2ForConditionalGeneration").extra_tokens == 0
    assert arch_entry("ChatGLM2WithPtuning2").extra_tokens == 0


def test_lora_targets_fused_qkv_not_output_layer():
    net = ChatGLM2ForConditionalGeneration(tiny())
    assert isinstance(net.transformer.output_layer, Linear)
    report = apply_pet(net, {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8,
                             "target_modules": ".*query_key_value*"})   # MindFormers' pattern
    assert report.targets == [f"transformer.encoder.layers.{i}.self_attention.query_key_value"
                              for i in range(2)]
    names = {p.name: tuple(p.shape) for p in net.trainable_params()}
    assert names == {f"transformer.encoder.layers.{i}.self_attention.query_key_value."
                     f"mindpet_delta_lora_{ab}": shape
                     for i in range(2) for ab, shape in (("a", (4, 32)), ("b", (64, 4)))}


@pytest.mark.parametrize("overrides,key", [
    (dict(vocab_size=100), "padded_vocab_size"),
    (dict(num_attention_heads=4, multi_query_group_num=3), "multi_query_group_num"),
    (dict(rmsnorm=False), "rmsnorm"),
    (dict(qkv_concat=False), "qkv_concat"),
    (dict(apply_query_key_layer_scaling=False), "apply_query_key_layer_scaling"),
    (dict(kv_channels=6), "kv_channels")])
def test_unsupported_options_are_user_errors(overrides, key):
    with pytest.raises(UserError) as err:
        ChatGLM2ForConditionalGeneration(tiny(**overrides))
    assert err.value.key == f"model.model_config.{key}"

