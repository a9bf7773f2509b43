"""The compiled train-step cells: accumulation equals a big batch, clipping, overflow skipping."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from petrun.models.configs import LlamaConfig
from petrun.models.llama import LlamaForCausalLM
from petrun.pet import apply_pet
from petrun.train import step as steps
from petrun.train.optim import build_optimizer

CFG = dict(seq_length=16, hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2, vocab_size=64,
           multiple_of=16, compute_dtype="float32", param_init_type="float32", rotary_dtype="float32")
LORA = {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "target_modules": ".*wq|.*wv"}


@pytest.fixture(autouse=True)
def graph():
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


def _model(seed=0):
    ms.set_seed(seed)
    net = LlamaForCausalLM(LlamaConfig(**CFG))
    apply_pet(net, LORA)
    # Non-zero B so gradients reach A as well as B.
    for p in net.trainable_params():
        if "lora_b" in p.name:
            p.set_data(Tensor(np.random.default_rng(1).normal(0, 0.02, p.shape).astype(np.float32)))
    net.set_train(True)
    return net


def _batch(n, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 64, (n, 17)).astype(np.int32)
    return Tensor(ids), Tensor(ids)


def _lora(net):
    return {p.name: p.asnumpy().copy() for p in net.trainable_params()}


def test_accumulating_two_halves_equals_one_full_batch():
    ids, labels = _batch(8, 0)
    lr = np.full(4, 1e-2, np.float32)

    big = _model()
    opt = build_optimizer(list(big.trainable_params()), {}, lr)
    steps.TrainStep(big, opt, use_clip=False)(ids, labels)

    acc = _model()
    params = list(acc.trainable_params())
    opt2 = build_optimizer(params, {}, lr)
    acc_cell = steps.AccumulateStep(acc, opt2.parameters, steps.make_buffers(params))
    apply_cell = steps.ApplyAccumulated(acc_cell, opt2, 2, use_clip=False)
    acc_cell(ids[:4], labels[:4])
    acc_cell(ids[4:], labels[4:])
    apply_cell()

    a, b = _lora(big), _lora(acc)
    assert a.keys() == b.keys()
    before = _lora(_model())
    assert any(not np.allclose(a[k], before[k]) for k in a)  # the step did something
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=2e-6, err_msg=k)
    # buffers are zeroed for the next step
    assert all(float(np.abs(buf.asnumpy()).max()) == 0.0 for buf in acc_cell.buffers)


def test_clipping_caps_the_update_norm():
    ids, labels = _batch(4, 1)
    net = _model()
    opt = build_optimizer(list(net.trainable_params()), {}, np.full(2, 1e-2, np.float32))
    cell = steps.TrainStep(net, opt, clip_norm=1e-4, use_clip=True)
    loss, overflow, scale, norm = cell(ids, labels)
    assert float(norm.asnumpy()) > 1e-4 and not bool(overflow.asnumpy())
    assert float(scale.asnumpy()) == 1.0


def test_dynamic_loss_scale_skips_overflowing_step_and_lowers_scale():
    ids, labels = _batch(4, 2)
    net = _model()
    before = _lora(net)
    opt = build_optimizer(list(net.trainable_params()), {}, np.full(2, 1e-2, np.float32))
    value, update = steps.build_loss_scale({"type": "DynamicLossScaleUpdateCell",
                                            "loss_scale_value": 2.0 ** 127, "scale_factor": 2,
                                            "scale_window": 1000})
    cell = steps.TrainStep(net, opt, value, update)
    assert cell.skip_on_overflow
    _, overflow, scale, _ = cell(ids, labels)
    assert bool(overflow.asnumpy())
    assert float(scale.asnumpy()) == 2.0 ** 126
    after = _lora(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # update skipped


def test_bad_scale_sense_is_a_user_error():
    from petrun.errors import UserError
    with pytest.raises(UserError, match="runner_wrapper.scale_sense"):
        steps.build_loss_scale({"type": "Nope"})
