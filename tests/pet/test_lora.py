"""LoRALinear math, merge/unmerge, dtypes, and training a tiny Llama in GRAPH mode."""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from petrun.errors import UserError
from petrun.models.layers import Linear
from petrun.pet import apply_pet
from petrun.pet.lora import LoRALinear, lora_layers, merge, unmerge

from tests.pet.pet_helpers import ATTN, Toy, randomize, snapshot

ALL_ATTN = ".*wq|.*wk|.*wv|.*wo"


def lora(**kw):
    return {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0,
            "target_modules": ALL_ATTN, **kw}


def perturb_b(net, seed=1, scale=0.5):
    rng = np.random.default_rng(seed)
    for _, cell in lora_layers(net):
        b = cell.mindpet_delta_lora_b
        b.set_data(Tensor(rng.normal(0, scale, b.shape).astype(np.float32)))


def ids(seed=0, shape=(2, 16)):
    return Tensor(np.random.default_rng(seed).integers(1, 128, shape).astype(np.int32))


def x3d(shape=(2, 3, 8), seed=0):
    return np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Parameters


def test_lora_params_follow_mindformers_names_shapes_and_init(llama):
    weights = {n: getattr(llama.model.layers[0].attention, n).weight for n in ATTN}
    apply_pet(llama, lora())
    params = {p.name: p for p in llama.get_parameters()}
    for i in range(2):
        for n in ATTN:
            layer = getattr(llama.model.layers[i].attention, n)
            assert isinstance(layer, LoRALinear)
            prefix = f"model.layers.{i}.attention.{n}"
            a = params[f"{prefix}.mindpet_delta_lora_a"].asnumpy()
            b = params[f"{prefix}.mindpet_delta_lora_b"].asnumpy()
            assert a.shape == (4, layer.in_channels) and b.shape == (layer.out_channels, 4)
            assert not b.any()                                          # B starts at zero
            bound = 1 / math.sqrt(layer.in_channels)                    # kaiming-uniform, a=√5
            assert np.abs(a).max() <= bound and np.abs(a).max() > 0.5 * bound
    # The base Parameter objects are reused, not copied.
    for n, w in weights.items():
        assert getattr(llama.model.layers[0].attention, n).weight is w
        assert w.name == f"model.layers.0.attention.{n}.weight"


def test_applying_twice_is_an_error(llama):
    apply_pet(llama, lora())
    with pytest.raises(UserError, match="already applied"):
        apply_pet(llama, lora())


# ---------------------------------------------------------------------------------------------
# Forward


def test_output_equals_base_exactly_at_init_even_with_dropout(llama):
    tokens = ids()
    llama.set_train(False)
    before = llama(tokens).asnumpy()
    apply_pet(llama, lora(lora_dropout=0.3))
    llama.set_train(True)   # dropout active: the delta is still exactly zero because B == 0
    after = llama(tokens).asnumpy()
    assert np.array_equal(before, after)


def test_forward_matches_reference_on_linear_with_bias():
    base = Linear(8, 6, has_bias=True)
    randomize(base)
    layer = LoRALinear(base, lora_rank=3, lora_alpha=6, lora_dropout=0.2)
    randomize(layer, seed=3)
    layer.set_train(False)
    x = x3d()
    w, bias = base.weight.asnumpy(), base.bias.asnumpy()
    a, b = layer.mindpet_delta_lora_a.asnumpy(), layer.mindpet_delta_lora_b.asnumpy()
    expected = x @ w.T + bias + 2.0 * (x @ a.T) @ b.T
    got = layer(Tensor(x))
    assert got.shape == (2, 3, 6)
    np.testing.assert_allclose(got.asnumpy(), expected, atol=1e-5)


def test_dropout_applies_to_the_lora_input_in_training_only():
    base = nn.Dense(8, 8, has_bias=False)
    layer = LoRALinear(base, lora_rank=4, lora_alpha=4, lora_dropout=0.5)
    randomize(layer, seed=4)
    x = Tensor(x3d((4, 16, 8)))
    layer.set_train(False)
    eval_out = layer(x).asnumpy()
    np.testing.assert_array_equal(eval_out, layer(x).asnumpy())
    layer.set_train(True)
    assert not np.allclose(layer(x).asnumpy(), eval_out, atol=1e-3)


def test_dense_activation_is_applied_after_the_lora_sum():
    base = nn.Dense(8, 6, activation="relu")
    layer = LoRALinear(base, lora_rank=2, lora_alpha=2)
    randomize(layer, seed=5)
    x = x3d()
    w, bias = base.weight.asnumpy(), base.bias.asnumpy()
    a, b = layer.mindpet_delta_lora_a.asnumpy(), layer.mindpet_delta_lora_b.asnumpy()
    pre = x @ w.T + bias + (x @ a.T) @ b.T
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), np.maximum(pre, 0), atol=1e-5)


def test_dtypes_inherit_from_the_base_or_come_from_the_config():
    base = Linear(8, 8, compute_dtype=ms.float16, param_init_type=ms.float32)
    layer = LoRALinear(base, lora_rank=2, lora_alpha=2)
    assert layer.mindpet_delta_lora_a.dtype == ms.float32       # = base weight dtype
    assert layer.compute_dtype == ms.float16
    x = Tensor(x3d())
    assert layer(x).dtype == base(x).dtype == ms.float16

    dense = nn.Dense(8, 8, dtype=ms.float16)
    assert LoRALinear(dense, 2, 2).compute_dtype == ms.float16   # nn.Dense: its weight dtype

    net = nn.SequentialCell([nn.Dense(8, 8)])
    holder = nn.Cell()
    holder.model = net
    apply_pet(holder, lora(target_modules="0", param_init_type="float16", compute_dtype="float16"))
    assert net[0].mindpet_delta_lora_b.dtype == ms.float16 and net[0].compute_dtype == ms.float16
    assert net[0].weight.dtype == ms.float32                      # base untouched
    assert net[0](x).dtype == ms.float32                          # = base output dtype


# ---------------------------------------------------------------------------------------------
# Merge / unmerge


def test_merge_matches_unmerged_and_unmerge_restores(llama):
    apply_pet(llama, lora())
    perturb_b(llama)
    llama.set_train(False)
    tokens = ids(1)
    base_w = snapshot(llama)
    unmerged = llama(tokens).asnumpy()

    assert merge(llama) == 8
    merged_w = snapshot(llama)
    merged = llama(tokens).asnumpy()
    np.testing.assert_allclose(merged, unmerged, atol=1e-5)
    assert not np.allclose(merged_w["model.layers.0.attention.wq.weight"],
                           base_w["model.layers.0.attention.wq.weight"])

    assert merge(llama) == 0                                      # idempotent: no double add
    for cell in (c for _, c in lora_layers(llama)):
        cell.merge()
    for name, value in snapshot(llama).items():
        np.testing.assert_array_equal(value, merged_w[name], err_msg=name)
    np.testing.assert_array_equal(llama(tokens).asnumpy(), merged)

    assert unmerge(llama) == 8 and unmerge(llama) == 0
    for name, value in snapshot(llama).items():
        np.testing.assert_allclose(value, base_w[name], atol=1e-6, err_msg=name)
        if "lora" in name:
            np.testing.assert_array_equal(value, base_w[name], err_msg=name)
    np.testing.assert_allclose(llama(tokens).asnumpy(), unmerged, atol=1e-5)


def test_merge_is_correct_in_a_graph_compiled_before_it(graph_mode):
    # A compiled graph keeps `merged` as the constant it was at compile time; holding B aside
    # while merged makes that stale graph add exactly zero instead of the delta a second time.
    net = Toy()
    randomize(net)
    apply_pet(net, lora(target_modules="wq|proj|out"))   # Dense, Linear, Dense+relu
    perturb_b(net)
    net.set_train(False)
    x = Tensor(x3d())
    unmerged = net(x).asnumpy()
    merge(net)
    np.testing.assert_allclose(net(x).asnumpy(), unmerged, atol=1e-5)
    unmerge(net)
    np.testing.assert_allclose(net(x).asnumpy(), unmerged, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Training


def test_graph_training_moves_only_lora_params(llama, graph_mode):
    report = apply_pet(llama, lora(lora_dropout=0.1))
    before = snapshot(llama)
    optimizer = nn.AdamWeightDecay(llama.trainable_params(), learning_rate=1e-2)
    step = nn.TrainOneStepCell(llama, optimizer)
    step.set_train(True)
    tokens = ids(2, (2, 17))   # labels given: the model drops one position
    losses = [float(step(tokens, tokens).asnumpy()) for _ in range(4)]
    after = snapshot(llama)

    assert losses[-1] < losses[0]
    changed = {n for n in before if not np.array_equal(before[n], after[n])}
    lora_names = {p.name for p in llama.trainable_params()}
    assert len(lora_names) == 2 * len(report.targets)
    assert changed and changed <= lora_names
    every_b = {n for n in lora_names if n.endswith("lora_b")}
    assert {n for n in changed if n.endswith("lora_b")} == every_b
    for name in before.keys() - lora_names:                        # base weights bit-identical
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
