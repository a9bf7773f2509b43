"""The step cells' per-gradient work (cast, global norm, clip, accumulate) is written with HyperMap,
which MindSpore 2.10 compiles several times faster than a generator expression or comprehension
over the gradient tuple (benchmarks/compile_phases.py; issue 16's cold first step). The numbers
must not change: the oracle is the step written the old way, with generator expressions."""
import ast
import inspect
import sys

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from petrun.models.configs import LlamaConfig
from petrun.models.llama import LlamaForCausalLM
from petrun.pet import apply_pet
from petrun.train import step as steps
from petrun.train.optim import build_optimizer
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT))
from benchmarks.ab_step import _genexpr_tail  # noqa: E402

CFG = dict(seq_length=16, hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2, vocab_size=64,
           multiple_of=16, compute_dtype="float32", param_init_type="float32", rotary_dtype="float32")
LORA = {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "target_modules": ".*wq|.*wk|.*wv|.*wo"}


@pytest.fixture(autouse=True)
def graph(monkeypatch):
    # Compile fresh: this is about the numbers, and a graph loaded from the shared compile cache
    # would not test the code as written.
    monkeypatch.setenv("PETRUN_COMPILE_CACHE", "0")
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


# The step as it was written before: generator expressions over the gradients (the same class
# benchmarks/ab_step.py times as its genexpr-tail toggle).
GenexprStep = _genexpr_tail(steps.TrainStep)


def _run(step_cls, clip_norm):
    ms.set_seed(0)
    net = LlamaForCausalLM(LlamaConfig(**CFG))
    apply_pet(net, LORA)
    rng = np.random.default_rng(1)
    for p in net.trainable_params():   # non-zero B: every gradient is non-zero
        if "lora_b" in p.name:
            p.set_data(Tensor(rng.normal(0, 0.02, p.shape).astype(np.float32)))
    net.set_train(True)
    params = list(net.trainable_params())
    opt = build_optimizer(params, {"weight_decay": 0.1}, np.full(4, 1e-2, np.float32))
    cell = step_cls(net, opt, 1.0, None, clip_norm, True)
    outs = []
    for seed in (0, 1, 2):
        ids = Tensor(np.random.default_rng(seed).integers(1, 64, (4, 17)).astype(np.int32))
        loss, _, _, norm = cell(ids, ids)
        outs.append((float(loss.asnumpy()), float(norm.asnumpy())))
    state = {p.name: p.asnumpy().copy() for p in params}
    state.update({m.name: m.asnumpy().copy() for m in (*opt.moments1, *opt.moments2)})
    return outs, state


@pytest.mark.parametrize("clip_norm", [1e-3, 1e3])   # clipping active / not reached
def test_step_numbers_are_bit_identical_to_the_generator_expression_step(clip_norm):
    outs, state = _run(steps.TrainStep, clip_norm)
    ref_outs, ref_state = _run(GenexprStep, clip_norm)
    if clip_norm < 1:
        assert all(norm > clip_norm * 10 for _, norm in ref_outs)   # the clip did scale
    assert outs == ref_outs
    assert state.keys() == ref_state.keys()
    for name, value in ref_state.items():
        assert np.array_equal(state[name], value), name


GRAPH_CODE = ("clip_by_norm", "_GradCore", "TrainStep", "AccumulateStep", "ApplyAccumulated")


def test_graph_code_has_no_loops_over_the_gradients():
    """What compiles into the step graphs holds no comprehension, generator expression or for
    loop (each would be unrolled over every gradient at a cost of seconds of compile)."""
    found = []
    for name in GRAPH_CODE:
        tree = ast.parse(inspect.getsource(getattr(steps, name)))
        for node in ast.walk(tree):
            if isinstance(node, (ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.DictComp, ast.For)):
                found.append(f"{name} line {node.lineno}: {type(node).__name__}")
    assert not found, found
