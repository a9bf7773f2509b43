"""GPT2LMHeadModel: names/shapes, numpy parity of logits and loss, tied head, dropout only in
training, the prefix hook, both execution modes, LoRA on dense1-3 and on the [in, out]
layers, and the options petrun
refuses. (Training runs through the real CLI in tests/integration/test_lora_families_cli.py.)"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from petrun.errors import UserError
from petrun.models import arch_entry
from petrun.models.configs import GPT2_SIZES, GPT2Config
from petrun.models.gpt2 import GPT2LMHeadModel, LinearInOut
from petrun.models.layers import Linear
from petrun.pet import apply_pet
from tests.models import gpt2_np_reference as ref
from tests.models.model_helpers import params_np, randomize


def tiny(**overrides) -> GPT2Config:
    """2 layers, hidden 32, 4 heads, vocab 97, 16 positions, fp32, no dropout."""
    values = dict(num_layers=2, vocab_size=97, hidden_size=32, num_heads=4, seq_length=16,
                  compute_dtype="float32", pad_token_id=0, eos_token_id=2,
                  embedding_dropout_prob=0.0, hidden_dropout_rate=0.0, attention_dropout_rate=0.0)
    values.update(overrides)
    return GPT2Config(**values)


def _net(cfg, seed=0):
    net = GPT2LMHeadModel(cfg)
    randomize(net, seed)
    net.set_train(False)
    return net


def _ids(batch=2, seq=9, seed=0, low=1):
    return np.random.default_rng(seed).integers(low, 97, (batch, seq)).astype(np.int32)


def test_parameter_names_and_shapes_follow_mindformers():
    net = GPT2LMHeadModel(tiny())
    want = [("backbone.embedding.word_embedding.embedding_table", (97, 32)),
            ("backbone.embedding.position_embedding.embedding_table", (16, 32))]
    for i in range(2):
        p = f"backbone.blocks.{i}."
        want += [(p + "layernorm1.gamma", (32,)), (p + "layernorm1.beta", (32,))]
        for j in (1, 2, 3):
            want += [(p + f"attention.dense{j}.weight", (32, 32)),
                     (p + f"attention.dense{j}.bias", (32,))]
        want += [(p + "attention.projection.weight", (32, 32)),
                 (p + "attention.projection.bias", (32,)),
                 (p + "layernorm2.gamma", (32,)), (p + "layernorm2.beta", (32,)),
                 (p + "output.mapping.weight", (32, 128)), (p + "output.mapping.bias", (128,)),
                 (p + "output.projection.weight", (128, 32)), (p + "output.projection.bias", (32,))]
    want += [("backbone.layernorm.gamma", (32,)), ("backbone.layernorm.beta", (32,))]
    assert [(p.name, tuple(p.shape)) for p in net.get_parameters()] == want
    block = net.backbone.blocks[0]
    assert all(isinstance(getattr(block.attention, f"dense{j}"), Linear) for j in (1, 2, 3))
    assert isinstance(block.attention.projection, LinearInOut) and block.attention.projection.weight_in_out


def test_documented_sizes():
    assert GPT2_SIZES["small"][:3] == (GPT2Config().hidden_size, GPT2Config().num_layers,
                                       GPT2Config().num_heads)
    assert GPT2_SIZES["xl"] == (1600, 48, 25, 1024, "fast_gelu")
    assert GPT2_SIZES["13b"] == (5120, 40, 40, 2048, "fast_gelu")
    assert tiny(max_position_embeddings=32).max_positions == 32 and tiny().max_positions == 16


@pytest.mark.parametrize("act", ["gelu", "fast_gelu"])
def test_logits_match_numpy_reference(mode, act):
    cfg = tiny(hidden_act=act)
    net = _net(cfg)
    ids = _ids()
    ids[1, 5] = cfg.pad_token_id   # pad keys are hidden from later positions
    logits = net(Tensor(ids))
    assert logits.dtype == ms.float32 and logits.shape == (2, 9, 97)
    want = ref.gpt2_forward(params_np(net), cfg, ids)
    np.testing.assert_allclose(logits.asnumpy(), want, rtol=1e-4, atol=1e-4)
    assert np.abs(want).max() > 1.0


def test_loss_matches_numpy_with_ignore_and_pad():
    cfg = tiny()
    net = _net(cfg, seed=1)
    ids = _ids(batch=3, seq=10, seed=2)
    ids[1, 7:] = cfg.pad_token_id
    labels = ids.copy()
    labels[:, :3] = -100
    loss = net(Tensor(ids), Tensor(labels))
    want = ref.gpt2_loss(params_np(net), cfg, ids, labels)
    np.testing.assert_allclose(float(loss.asnumpy()), want, rtol=1e-5)


def test_head_is_tied_to_the_word_embedding():
    cfg = tiny()
    net = _net(cfg, seed=2)
    ids = Tensor(_ids(seed=3))
    before = net(ids).asnumpy()
    table = net.backbone.embedding.word_embedding.embedding_table
    table.set_data(Tensor(table.asnumpy() * 2.0))
    assert not np.allclose(net(ids).asnumpy(), before)
    assert not any("head" in p.name for p in net.get_parameters())


def test_dropout_acts_only_in_training():
    cfg = tiny(embedding_dropout_prob=0.1, hidden_dropout_rate=0.1, attention_dropout_rate=0.1)
    net = _net(cfg, seed=3)
    ids = Tensor(_ids(seed=4))
    net.set_train(False)
    a, b = net(ids).asnumpy(), net(ids).asnumpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, ref.gpt2_forward(params_np(net), cfg, _ids(seed=4)),
                               rtol=1e-4, atol=1e-4)
    net.set_train(True)
    assert not np.allclose(net(ids).asnumpy(), a)


def test_prefix_key_values_match_numpy(mode):
    cfg = tiny()
    net = _net(cfg, seed=4)
    ids = _ids(seed=5)
    rng = np.random.default_rng(6)
    prefix = [rng.normal(0, 1, (2, 2, 4, 3, 8)).astype(np.float32) for _ in range(2)]
    logits = net(Tensor(ids), None, tuple(Tensor(p) for p in prefix)).asnumpy()
    P = params_np(net)
    np.testing.assert_allclose(logits, ref.gpt2_forward(P, cfg, ids, prefix), rtol=1e-4, atol=1e-4)
    assert np.abs(logits - ref.gpt2_forward(P, cfg, ids)).max() > 1e-2


def test_lora_on_q_k_v_projections():
    net = GPT2LMHeadModel(tiny())
    assert arch_entry("GPT2LMHeadModel").extra_tokens == 1
    report = apply_pet(net, {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8,
                             "target_modules": ".*dense1|.*dense2|.*dense3"})
    assert len(report.targets) == 6 and all(".attention.dense" in t for t in report.targets)
    trainable = sorted(p.name for p in net.trainable_params())
    assert trainable[0] == "backbone.blocks.0.attention.dense1.mindpet_delta_lora_a"
    assert len(trainable) == 12


def test_lora_on_the_in_out_layers_adds_the_transposed_delta():
    """MindFormers' LoRA adapts GPT-2's transpose_b=False layers too (attention.projection,
    output.mapping/projection: weight [in, out]) with A [r, in] and B [out, r]. The numpy
    reference, told only W_in_out + s·(B·A)ᵀ, must give the adapted model's logits, live and
    merged; unmerge restores the weight."""
    from petrun.pet import merge as pet_merge

    cfg = tiny()
    net = _net(cfg, seed=7)
    report = apply_pet(net, {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8,
                             "lora_dropout": 0.0, "target_modules": ".*projection|.*mapping"})
    assert sorted(report.targets) == sorted(
        f"backbone.blocks.{i}.{n}" for i in range(2)
        for n in ("attention.projection", "output.mapping", "output.projection"))
    rng = np.random.default_rng(8)
    for p in net.trainable_params():
        p.set_data(Tensor(rng.normal(0, 0.2, p.shape).astype(np.float32)))
    P = params_np(net)
    a, b = (P["backbone.blocks.1.output.mapping.mindpet_delta_lora_" + x] for x in "ab")
    assert a.shape == (4, 32) and b.shape == (128, 4)   # MindFormers' [r, in], [out, r]
    want_p = dict(P)
    for t in report.targets:
        delta = 2.0 * (P[f"{t}.mindpet_delta_lora_b"] @ P[f"{t}.mindpet_delta_lora_a"])
        want_p[f"{t}.weight"] = P[f"{t}.weight"] + delta.T          # [in, out]
    ids = _ids(seed=9)
    want = ref.gpt2_forward(want_p, cfg, ids)
    assert np.abs(want - ref.gpt2_forward(P, cfg, ids)).max() > 1e-2   # the delta matters
    np.testing.assert_allclose(net(Tensor(ids)).asnumpy(), want, rtol=1e-4, atol=1e-4)
    assert pet_merge.merge(net) == 6
    w = net.backbone.blocks[0].attention.projection.weight.asnumpy()
    np.testing.assert_allclose(w, want_p["backbone.blocks.0.attention.projection.weight"],
                               atol=1e-5)
    np.testing.assert_allclose(net(Tensor(ids)).asnumpy(), want, rtol=1e-4, atol=1e-4)
    pet_merge.unmerge(net)
    np.testing.assert_allclose(net.backbone.blocks[0].attention.projection.weight.asnumpy(),
                               P["backbone.blocks.0.attention.projection.weight"], atol=1e-5)


@pytest.mark.parametrize("overrides,key", [
    (dict(hidden_size=30), "num_heads"), (dict(hidden_act="relu"), "hidden_act"),
    (dict(post_layernorm_residual=True), "post_layernorm_residual"),
    (dict(max_position_embeddings=8), "max_position_embeddings")])
def test_unsupported_options_are_user_errors(overrides, key):
    with pytest.raises(UserError) as err:
        GPT2LMHeadModel(tiny(**overrides))
    assert err.value.key == f"model.model_config.{key}"

