"""The public Python API: a facade over the build layer (petrun/build.py) and the Trainer.

    cfg = petrun.load_config("configs/llama2/lora_llama2_tiny.yaml", ["runner_config.epochs=1"])
    model = petrun.build_model(cfg)                 # base model + PET transform
    petrun.load_checkpoint(model, "output/checkpoint/rank_0/adapter.ckpt")
    petrun.logits(model, [[1, 2, 3]])               # np.ndarray [batch, seq, vocab], fp32
    petrun.Trainer(config=cfg, pet_method="lora", train_dataset="data.jsonl").finetune()
    petrun.Trainer(task="text_generation", model="gpt2", pet_method="lora",
                   train_dataset="wikitext-2/").finetune()   # model from `petrun models add`

Nothing inside petrun imports this module: the library's own code calls petrun.build directly, so
the facade can grow without creating import circles (tests/test_architecture.py).
"""
from __future__ import annotations

from typing import Iterable

from petrun.build import PET_PATTERN, build_model, load_checkpoint, logits  # noqa: F401
from petrun.config import Config, with_overrides


def load_config_from(cfg: Config, overrides: Iterable[str]) -> Config:
    """`cfg` with `overrides` applied and validated again (the original is unchanged)."""
    return with_overrides(cfg, overrides)


# MindFormers' Trainer (task/model/pet_method/...), in a module of its own: petrun/trainer.py.
from petrun.trainer import Trainer  # noqa: E402,F401  (pure python until a verb runs)
