"""recompute_config as MindFormers r1.3 applies it (petrun/models/recompute.py), on CPU.

MindSpore 2.10's recompute pass runs in GRAPH_MODE on CPU (how petrun trains), so the real models
are built through build_model with recompute_config and compared with the same weights built without it: losses
and gradients must agree (oracle: the model without recompute; recompute only re-runs forward
ops, so they are equal up to float reassociation), and the cells and primitives MindFormers
marks must carry MindSpore's recompute marks (a full layer: Cell._has_config_recompute; a
selected primitive: its "recompute" attribute). The per-layer plan is checked against
MindFormers' LayerSetting rules read by hand (models/utils.py, llama_transformer.py, gpt2.py).
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from petrun.build import as_config, build_model
from petrun.errors import UserError
from petrun.models.recompute import LayerRecompute, recompute_plan
from tests.models.model_helpers import randomize

CONFIGS = {"llama2": "petrun/configs/llama2/lora_llama2_tiny.yaml",
           "glm2": "petrun/configs/glm2/lora_glm2_tiny.yaml",
           "gpt2": "petrun/configs/gpt2/lora_gpt2_tiny.yaml"}
SEQ = 32
BASE = ["~model.model_config.pet_config", f"model.model_config.seq_length={SEQ}",
        "context.device_target=CPU"]


def _net(family, *overrides):
    cfg = as_config(CONFIGS[family], BASE + list(overrides))
    net = build_model(cfg, device_target="CPU")
    randomize(net, seed=3)
    net.set_train(False)      # dropout off; gradients are still taken
    return net


def _layers(net):
    return next(c for _, c in net.cells_and_names() if isinstance(c, nn.CellList))


class _Loss(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, ids):
        return self.net(ids, ids)


def _loss_and_grads(net, family):
    rng = np.random.default_rng(0)
    # ChatGLM2 takes seq_length tokens with their labels; the others seq_length + 1 and shift
    ids = Tensor(rng.integers(3, 500, (2, SEQ + (family != "glm2"))).astype(np.int32))
    params = net.trainable_params()
    fn = ms.value_and_grad(_Loss(net), None, params)
    loss, grads = fn(ids)
    return float(loss.asnumpy()), {p.name: g.asnumpy() for p, g in zip(params, grads)}


def _marked(prim_or_cell) -> bool:
    if isinstance(prim_or_cell, nn.Cell):
        return bool(prim_or_cell._has_config_recompute)   # noqa: SLF001 — MindSpore's own mark
    return bool(prim_or_cell.attrs.get("recompute", False))


SLICE = "recompute_config.recompute_slice_activation=True"   # as MindFormers' 7B/13B files set


@pytest.mark.parametrize("family,switch", [
    ("llama2", "recompute_config.recompute=True"),
    ("llama2", "recompute_config.select_recompute=True"),
    ("glm2", "recompute_config.recompute=True"),
    ("gpt2", "recompute_config.recompute=True"),
])
def test_recompute_keeps_loss_and_gradients(family, switch, graph_mode):
    plain_loss, plain_grads = _loss_and_grads(_net(family), family)
    net = _net(family, switch, *([SLICE] if family == "glm2" else []))
    layers = _layers(net)
    if switch.endswith("select_recompute=True"):
        for layer in layers:
            assert not _marked(layer)
            assert _marked(layer.feed_forward.mul) and _marked(layer.feed_forward.act)
            assert _marked(layer.attention.core) and _marked(layer.attention.apply_rotary)
    else:
        assert all(_marked(layer) for layer in layers)
    loss, grads = _loss_and_grads(net, family)
    assert abs(loss - plain_loss) <= 1e-6
    assert grads.keys() == plain_grads.keys() and len(grads) > 10
    for name, g in grads.items():
        np.testing.assert_allclose(g, plain_grads[name], rtol=0, atol=1e-6, err_msg=name)


def test_recompute_in_pynative_mode_keeps_loss_and_gradients():
    # context.mode 1: Cell.recompute() wraps the layer (_RecomputeCell) instead of a graph pass
    plain_loss, plain_grads = _loss_and_grads(_net("llama2"), "llama2")
    loss, grads = _loss_and_grads(_net("llama2", "recompute_config.recompute=True"), "llama2")
    assert abs(loss - plain_loss) <= 1e-6
    for name, g in grads.items():
        np.testing.assert_allclose(g, plain_grads[name], rtol=0, atol=1e-6, err_msg=name)


def test_without_recompute_config_nothing_is_marked(graph_mode):
    for family in CONFIGS:
        net = _net(family)
        assert not any(_marked(c) for _, c in net.cells_and_names())


def test_glm2_select_recompute_marks_nothing_as_in_mindformers(graph_mode):
    # MindFormers' default patterns name `feed_forward`; ChatGLM2Block's MLP is `mlp`.
    net = _net("glm2", "recompute_config.select_recompute=True")
    assert not any(_marked(c) for _, c in net.cells_and_names())
    assert not _marked(_layers(net)[0].mlp.mul)


# ---- the per-layer plan (pure Python) against MindFormers' LayerSetting read by hand --------

def test_plan_per_stage_list():
    # recompute: [1, 2] on 2 stages of 3 layers: layer 0 full on stage 0; 3 and 4 on stage 1;
    # the rest get select recompute (default patterns on every layer: select_recompute True).
    plans = recompute_plan("llama2", {"recompute": [1, 2], "select_recompute": True}, 6, pp=2)
    assert [p.full for p in plans] == [True, False, False, True, True, False]
    ffn = ("feed_forward.mul", "feed_forward.act")
    attn = ("attention.apply_rotary", "attention.core")
    assert plans[1].select == ffn + attn and plans[5].select == ffn + attn
    # select_recompute as a per-stage list: the defaults on the first n layers of each stage,
    # but LLamaAttention's ops on every layer (the list is truthy).
    plans = recompute_plan("llama2", {"select_recompute": [0, 1]}, 4, pp=2)
    assert [p.select for p in plans] == [attn, attn, ffn + attn, attn]
    # with flash attention the attention ops are left alone (no scores to recompute)
    plans = recompute_plan("llama2", {"select_recompute": True}, 2, flash_attention=True)
    assert all(p.select == ffn for p in plans)
    # True for a stage means all its layers; a count is capped at the stage's layers
    plans = recompute_plan("llama2", {"recompute": [True, 9]}, 4, pp=2)
    assert all(p.full for p in plans)


def test_plan_gpt2_and_bool_forms():
    assert all(p.full for p in recompute_plan("gpt2", {"recompute": [1, 0]}, 4, pp=2))
    assert not any(p.any for p in recompute_plan("gpt2", {"select_recompute": True}, 2))
    full = recompute_plan("glm2", {"recompute": True, "recompute_slice_activation": True}, 2)
    assert full == (LayerRecompute(full=True, slice_activation=True),) * 2
    assert not any(p.any for p in recompute_plan("llama2", {}, 3))


def test_plan_refuses_what_it_cannot_map():
    with pytest.raises(UserError, match="recompute_config.select_recompute"):
        recompute_plan("llama2", {"select_recompute": [r"attention\.wq"]}, 2)
    with pytest.raises(UserError, match="pipeline stages"):
        recompute_plan("llama2", {"recompute": [1, 1, 1]}, 4, pp=2)


@pytest.mark.parametrize("override,says", [
    ('recompute_config.select_recompute=["mlp"]', "maps only MindFormers' default"),
    ("recompute_config.recompute=[1,1,1]", "has 3 entries but there are 1 pipeline stages"),
])
def test_config_validate_refuses_a_recompute_config_it_cannot_apply(cli, override, says):
    res = cli("config", "validate", "--config", CONFIGS["llama2"], override, timeout=120)
    text = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 2, text
    assert "recompute_config." in text and says in text and "Traceback" not in text
