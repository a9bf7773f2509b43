"""The cross-run compile cache's key (petrun/train/compile_cache.py): identical builds share a
graph folder; anything the compiled graph depends on (constants such as lora_alpha, parameter
shapes such as the lr table's length, input shapes, dropout seeds) gives another folder."""
import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

import petrun  # noqa: E402
from petrun.train import compile_cache  # noqa: E402
from petrun.train.step import TrainStep  # noqa: E402
from petrun.train.optim import build_optimizer  # noqa: E402

CONFIG = "configs/llama2/lora_llama2_tiny.yaml"


def _key(overrides=(), steps=10, shape=(2, 17), seed=0):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(seed)
    cfg = petrun.load_config(CONFIG, ["load_checkpoint=''", *overrides])
    net = petrun.build_model(cfg)
    params = list(net.trainable_params())
    opt = build_optimizer(params, cfg.get("optimizer") or {}, np.full(steps, 1e-4, np.float32))
    cell = TrainStep(net, opt, 1.0, None, 1.0, True)
    ids = ms.Tensor(np.ones(shape, np.int32))
    return compile_cache.graph_key(cell, (ids, ids))


def test_same_build_same_key_and_every_graph_input_changes_it():
    base = _key()
    assert _key() == base
    assert _key(["model.model_config.pet_config.lora_alpha=32"]) != base      # a folded constant
    assert _key(["model.model_config.pet_config.lora_rank=4"]) != base        # parameter shapes
    assert _key(["model.model_config.pet_config.lora_dropout=0.1"]) != base   # dropout rate
    assert _key(steps=11) != base                                             # lr table length
    assert _key(shape=(4, 17)) != base                                        # input shapes
    assert _key(["model.model_config.theta=500.0"]) != base               # rope tables


def test_switches(monkeypatch):
    ms.set_context(mode=ms.GRAPH_MODE)
    monkeypatch.delenv("MS_COMPILER_CACHE_ENABLE", raising=False)
    monkeypatch.delenv("MS_ROLE", raising=False)
    monkeypatch.setenv("PETRUN_COMPILE_CACHE", "1")
    assert compile_cache.enabled()
    monkeypatch.setenv("PETRUN_COMPILE_CACHE", "0")
    assert not compile_cache.enabled()
    monkeypatch.setenv("PETRUN_COMPILE_CACHE", "1")
    monkeypatch.setenv("MS_COMPILER_CACHE_ENABLE", "1")   # the user's own setting stands
    assert not compile_cache.enabled()
