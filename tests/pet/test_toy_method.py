"""Acceptance for the PET-method registry (issue 15): a new method is one module
(tests/pet/toy_method.py) plus one registration, and with no other file touched it gets config
validation, the planner's shapes, the pre-flight, training, and save → load.
"""
import fnmatch

import numpy as np
import pytest

from petrun.build import build_model, load_checkpoint, logits
from petrun.config import load_config
from petrun.errors import UserError
from petrun.pet.config import PetMethod, register_method, unregister_method
from tests.conftest import ROOT
from tests.pet.toy_method import ToyConfig

CONFIG = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"
DATA = ROOT / "data" / "demo" / "alpaca_demo_seq256.jsonl"
BASE = ROOT / "data" / "demo" / "llama2_tiny_base.ckpt"
TOY = ["model.model_config.pet_config={pet_type: toy, target_modules: '.*wq|.*wv'}"]


@pytest.fixture
def toy():
    # The one registration.
    register_method(PetMethod("toy", ToyConfig, "tests.pet.toy_method:apply",
                              "tests.pet.toy_method:shapes", title="toy scaling", tags=("toy",)))
    yield
    unregister_method("toy")


def test_config_validation_knows_the_method(toy):
    cfg = load_config(CONFIG, TOY)
    assert cfg.get("model.model_config.pet_config.pet_type") == "toy"
    with pytest.raises(UserError, match="target_modules"):
        load_config(CONFIG, ["model.model_config.pet_config={pet_type: toy, target_modules: 3}"])
    with pytest.raises(UserError, match="lora_rank"):   # its own keys, not LoRA's
        load_config(CONFIG, ["model.model_config.pet_config={pet_type: toy, "
                             "target_modules: '.*wq', lora_rank: 4}"])


def test_unregistered_it_is_unknown():
    with pytest.raises(UserError, match="toy"):
        load_config(CONFIG, TOY)


def test_planner_shapes_match_the_built_model(toy):
    from petrun.plan.estimator import estimate
    cfg = load_config(CONFIG, TOY)
    est = estimate(cfg)
    net = build_model(cfg)
    trainable = [p for p in net.trainable_params()]
    assert trainable and all(fnmatch.fnmatchcase(p.name, "*mindpet_delta_toy_s") for p in trainable)
    assert est.params_trainable == sum(int(np.prod(p.shape)) for p in trainable)
    assert est.params_total == sum(int(np.prod(p.shape)) for p in net.get_parameters())


def test_preflight_train_save_and_load(toy, tmp_path):
    from rich.console import Console

    from petrun.jobs import run_job
    cfg = load_config(CONFIG, TOY + [f"output_dir={tmp_path}", "runner_config.stop_step=3",
                                     f"train_dataset.data_loader.dataset_dir={DATA}",
                                     f"load_checkpoint={BASE}"])
    summary = run_job(cfg, "finetune", Console(file=open(tmp_path / "log.txt", "w")),
                      preflight=True)
    assert summary["steps"] == 3
    adapter = summary["checkpoints"][-1]["path"]

    import mindspore as ms
    ms.set_context(mode=ms.PYNATIVE_MODE)
    fresh = build_model(load_config(CONFIG, TOY))
    load_checkpoint(fresh, BASE)
    before = logits(fresh, [[5, 6, 7, 8]])
    info = load_checkpoint(fresh, adapter)
    assert info["kind"] == "adapter" and info["loaded"] and all(
        n.endswith("mindpet_delta_toy_s") for n in info["loaded"])
    trained = {p.name: p.asnumpy() for p in fresh.trainable_params()}
    assert any(not np.allclose(v, 1.0) for v in trained.values())   # training moved the vectors
    assert not np.allclose(before, logits(fresh, [[5, 6, 7, 8]]))
