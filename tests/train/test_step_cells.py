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
    """Plain SGD, so the update is the applied gradient itself: under Adam a first step is nearly
    the sign of the gradient and would hide an accumulation that forgot to average."""
    from mindspore import nn
    ids, labels = _batch(8, 0)
    lr = 1e3

    big = _model()
    before = _lora(big)
    steps.TrainStep(big, nn.SGD(list(big.trainable_params()), learning_rate=lr),
                    use_clip=False)(ids, labels)

    acc = _model()
    params = list(acc.trainable_params())
    opt2 = nn.SGD(params, learning_rate=lr)
    acc_cell = steps.AccumulateStep(acc, opt2.parameters, steps.make_buffers(params))
    apply_cell = steps.ApplyAccumulated(acc_cell, opt2, 2, use_clip=False)
    acc_cell(ids[:4], labels[:4])
    acc_cell(ids[4:], labels[4:])
    apply_cell()

    a, b = _lora(big), _lora(acc)
    assert a.keys() == b.keys()
    grad_big = {k: (before[k].astype(np.float64) - a[k]) / lr for k in a}
    grad_acc = {k: (before[k].astype(np.float64) - b[k]) / lr for k in b}
    assert any(np.abs(g).max() > 0 for g in grad_big.values())  # the step did something
    _close(grad_acc, grad_big, "accumulated")
    # buffers are zeroed for the next step
    assert all(float(np.abs(buf.asnumpy()).max()) == 0.0 for buf in acc_cell.buffers)


def _sgd_step(clip_norm, use_clip, lr=1e3):
    """One TrainStep with plain SGD: the parameter change is minus lr times the gradient the step
    applied, so clipping can be read off the update (Adam would hide it: its first update is
    almost the sign of the gradient, whatever its scale). The large lr lifts the change well above
    fp32 rounding of the parameters (gradients here are ~1e-7)."""
    from mindspore import nn
    ids, labels = _batch(4, 1)
    net = _model()
    before = _lora(net)
    opt = nn.SGD(list(net.trainable_params()), learning_rate=lr)
    _, _, _, norm = steps.TrainStep(net, opt, clip_norm=clip_norm, use_clip=use_clip)(ids, labels)
    after = _lora(net)
    return ({k: (before[k].astype(np.float64) - after[k]) / lr for k in before},
            float(norm.asnumpy()))


def _close(a, b, what):
    scale = max(float(np.abs(x).max()) for x in b.values())
    for k in b:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=1e-4 * scale, err_msg=f"{what}: {k}")


def test_clipping_scales_the_applied_gradient_to_the_threshold():
    raw, norm = _sgd_step(1.0, use_clip=False)
    # The reported norm is the global L2 norm of the raw gradients (numpy as the oracle).
    expect_norm = float(np.sqrt(sum(float((g ** 2).sum()) for g in raw.values())))
    assert norm == pytest.approx(expect_norm, rel=1e-3)
    threshold = expect_norm / 4
    clipped, _ = _sgd_step(threshold, use_clip=True)
    # every gradient scaled by threshold / norm, directions kept
    _close(clipped, {k: g * (threshold / expect_norm) for k, g in raw.items()}, "clipped")
    applied = np.sqrt(sum(float((g ** 2).sum()) for g in clipped.values()))
    assert applied == pytest.approx(threshold, rel=1e-3)


def test_clipping_leaves_gradients_below_the_threshold_alone():
    raw, norm = _sgd_step(1.0, use_clip=False)
    kept, _ = _sgd_step(norm * 10, use_clip=True)
    _close(kept, raw, "unclipped")


def test_weight_decay_groups_follow_mindformers_rule():
    """MindFormers (trainer/optimizer_grouped_parameters.py, models without no_weight_decay
    hooks): a parameter decays unless it is 1-D or its name ends in '.bias'. Expected groups are
    written out by hand for a tiny GPT2 full finetune, which has every kind of parameter."""
    import petrun
    cfg = petrun.load_config("configs/gpt2/lora_gpt2_tiny.yaml", ["~model.model_config.pet_config"])
    net = petrun.build_model(cfg)
    params = list(net.trainable_params())
    opt = build_optimizer(params, {"weight_decay": 0.1}, np.full(2, 1e-3, np.float32))
    # With groups, MindSpore keeps one weight-decay value per parameter, in parameter order.
    groups = {p.name: float(wd.asnumpy()) for p, wd in zip(opt.parameters, opt.weight_decay)}
    decays = {
        "backbone.embedding.word_embedding.embedding_table": 0.1,
        "backbone.embedding.position_embedding.embedding_table": 0.1,
        "backbone.blocks.0.attention.dense1.weight": 0.1,
        "backbone.blocks.1.output.projection.weight": 0.1,
        "backbone.blocks.0.attention.dense1.bias": 0.0,
        "backbone.blocks.0.output.mapping.bias": 0.0,
        "backbone.blocks.0.layernorm1.gamma": 0.0,
        "backbone.blocks.1.layernorm2.beta": 0.0,
        "backbone.layernorm.gamma": 0.0,
    }
    for name, wd in decays.items():
        assert groups[name] == pytest.approx(wd), name
    assert len(groups) == len(params)


def test_dynamic_loss_scale_skips_overflowing_step_and_lowers_scale():
    ids, labels = _batch(4, 2)
    net = _model()
    before = _lora(net)
    opt = build_optimizer(list(net.trainable_params()), {}, np.full(2, 1e-2, np.float32))
    value, update = steps.build_loss_scale({"type": "DynamicLossScaleUpdateCell",
                                            "loss_scale_value": 2.0 ** 127, "scale_factor": 2,
                                            "scale_window": 1000})
    cell = steps.TrainStep(net, opt, value, update)
    assert cell.loss_scaled
    _, overflow, scale, _ = cell(ids, labels)
    assert bool(overflow.asnumpy())
    assert float(scale.asnumpy()) == 2.0 ** 126
    after = _lora(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # update skipped


def test_bad_scale_sense_is_a_user_error():
    from petrun.errors import UserError
    with pytest.raises(UserError, match="runner_wrapper.scale_sense"):
        steps.build_loss_scale({"type": "Nope"})


def _poisoned(seed=0):
    """A model whose frozen embedding row 63 is NaN: a batch holding token 63 gives a NaN loss
    and NaN gradients (a bad batch), every other batch trains normally."""
    net = _model(seed)
    emb = next(p for p in net.get_parameters() if p.name.endswith("tok_embeddings.embedding_weight"))
    table = emb.asnumpy().copy()
    table[63] = np.nan
    emb.set_data(Tensor(table))
    return net


def _state(net, opt):
    return {**_lora(net), **{m.name: m.asnumpy().copy() for m in (*opt.moments1, *opt.moments2)},
            "global_step": opt.global_step.asnumpy().copy()}


@pytest.mark.parametrize("accum", [1, 2])
def test_a_non_finite_step_applies_no_update_even_without_a_loss_scale(accum):
    """fp32, scale 1.0 (MindFormers' MFTrainOneStepCell skips here too): a bad batch leaves the
    parameters, AdamW's moments and its step count as they were, so bad batch + good batch ends
    exactly where the good batch alone does (the oracle: a second model that never saw it)."""
    bad_ids = np.full((4, 17), 63, np.int32)
    good_ids = _batch(4, 3)[0].asnumpy()
    assert 63 not in good_ids

    def run(batches):
        net = _poisoned()
        params = list(net.trainable_params())
        opt = build_optimizer(params, {"weight_decay": 0.1}, np.full(8, 1e-2, np.float32))
        if accum == 1:
            cell = steps.TrainStep(net, opt, use_clip=True)
            outs = [cell(Tensor(b), Tensor(b)) for b in batches]
            flags = [(float(o[0].asnumpy()), bool(o[1].asnumpy())) for o in outs]
        else:
            acc = steps.AccumulateStep(net, opt.parameters, steps.make_buffers(params))
            apply = steps.ApplyAccumulated(acc, opt, 2, use_clip=True)
            flags = []
            for b in batches:   # two micro-batches: the bad one spoils the whole step
                loss = float(acc(Tensor(b[:2]), Tensor(b[:2]))[0].asnumpy())
                acc(Tensor(good_ids[2:]), Tensor(good_ids[2:]))
                flags.append((loss, bool(apply()[0].asnumpy())))
        return flags, _state(net, opt)

    flags, skipped = run([bad_ids, good_ids])
    assert np.isnan(flags[0][0]) and flags[0][1]          # the bad step: NaN loss, overflow
    assert np.isfinite(flags[1][0]) and not flags[1][1]
    _, alone = run([good_ids])
    assert skipped.keys() == alone.keys()
    for name, value in alone.items():
        assert np.array_equal(skipped[name], value), name
    assert all(np.isfinite(v).all() for v in skipped.values())
