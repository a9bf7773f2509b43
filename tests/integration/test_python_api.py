"""The Python API mirrors MindFormers' seed usage: Trainer(config, pet_method, train_dataset)."""
import numpy as np
import pytest

import petrun
from petrun.errors import UserError
from tests.conftest import ROOT

CONFIG = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"
DATA = ROOT / "data" / "demo" / "alpaca_demo_seq256.jsonl"


def test_trainer_finetune_then_reload_adapter(tmp_path):
    trainer = petrun.Trainer(config=CONFIG, pet_method="lora", train_dataset=DATA,
                             overrides=[f"output_dir={tmp_path}", "runner_config.stop_step=3"])
    summary = trainer.finetune(finetune_checkpoint=ROOT / "data" / "demo" / "llama2_tiny_base.ckpt")
    assert summary["steps"] == 3 and len(summary["losses"]) == 3
    # In-process, the measured peak is this test process's own high-water mark.
    assert summary["memory"]["measured_peak"] > 0 and summary["memory"]["planned_peak"] > 0
    adapter = summary["checkpoints"][-1]["path"]

    import mindspore as ms
    ms.set_context(mode=ms.PYNATIVE_MODE)
    cfg = petrun.load_config(CONFIG)
    model = petrun.build_model(cfg)
    petrun.load_checkpoint(model, ROOT / "data" / "demo" / "llama2_tiny_base.ckpt")
    before = petrun.logits(model, [[5, 6, 7, 8]])
    info = petrun.load_checkpoint(model, adapter)
    assert info["kind"] == "adapter" and len(info["loaded"]) == 16
    after = petrun.logits(model, [[5, 6, 7, 8]])
    assert after.shape == (1, 4, 512) and after.dtype == np.float32
    assert not np.allclose(before, after)  # the trained adapter changes the output


def test_trainer_rejects_a_pet_method_the_config_does_not_have():
    with pytest.raises(UserError, match="pet_type is 'lora'"):
        petrun.Trainer(config=CONFIG, pet_method="ptuning2")


def test_pet_method_alone_gives_the_familys_default_pet_config():
    """A YAML without pet_config + pet_method: the seed's GPT-2 LoRA (what Trainer(model='gpt2',
    pet_method='lora') runs too)."""
    trainer = petrun.Trainer(config=ROOT / "configs" / "gpt2" / "run_gpt2.yaml", pet_method="lora")
    assert trainer.config.get("model.model_config.pet_config") == {
        "pet_type": "lora", "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.1,
        "target_modules": ".*dense1|.*dense2|.*dense3"}
    # MindFormers' positional order: args first
    assert petrun.Trainer(str(CONFIG)).config.get("model.model_config.pet_config.pet_type") == "lora"


def test_mindformers_arguments_petrun_does_not_take_are_refused():
    with pytest.raises(UserError, match="args and config both give"):
        petrun.Trainer(args=CONFIG, config=CONFIG)
    with pytest.raises(UserError, match="(?s)optimizers= is not supported.*optimizer and lr_schedule"):
        petrun.Trainer(args=CONFIG, optimizers=object())
    with pytest.raises(UserError, match="model= got a object"):
        petrun.Trainer(model=object())
