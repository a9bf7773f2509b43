"""The Python API the CLI itself uses (and that mirrors MindFormers' seed usage).

    cfg = petrun.load_config("configs/llama2/lora_llama2_tiny.yaml", ["runner_config.epochs=1"])
    model = petrun.build_model(cfg)                 # base model + PET transform
    petrun.load_checkpoint(model, "output/checkpoint/rank_0/adapter.ckpt")
    petrun.logits(model, [[1, 2, 3]])               # np.ndarray [batch, seq, vocab], fp32
    petrun.Trainer(config=cfg, pet_method="lora", train_dataset="data.jsonl").finetune()
    petrun.Trainer(task="text_generation", model="gpt2", pet_method="lora",
                   train_dataset="wikitext-2/").finetune()   # model from `petrun models add`
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from petrun.config import Config, load_config, with_overrides
from petrun.errors import UserError

from petrun.ckpt.io import ADAPTER_PATTERN as PET_PATTERN  # noqa: E402 (pure python module)

# LoRA targets per family for the planner's "add LoRA" lever (plan/levers.py). Trainer's default
# pet_configs are petrun/store/recipes.py's.
DEFAULT_LORA_TARGETS = {"LlamaForCausalLM": ".*wq|.*wk|.*wv|.*wo",
                        "ChatGLM2ForConditionalGeneration": ".*query_key_value",
                        "GPT2LMHeadModel": ".*dense1|.*dense3"}   # MindFormers' GPT2WithLora


def _as_config(config: Config | str | Path, overrides: Iterable[str] = ()) -> Config:
    if isinstance(config, Config):
        return load_config_from(config, overrides) if overrides else config
    return load_config(config, list(overrides))


def load_config_from(cfg: Config, overrides: Iterable[str]) -> Config:
    """`cfg` with `overrides` applied and validated again (the original is unchanged)."""
    return with_overrides(cfg, overrides)


def build_model(cfg: Config | str | Path, *, device_target: str | None = None, report=None):
    """Base model from model.arch/model.model_config, then the PET transform if pet_config is set,
    then — in semi-auto/auto parallel only — the shard strategies and pipeline stages that
    cfg's parallel_config implies (petrun/parallel/shard.py).

    `report`, if given, is called with the PetReport (trainable-parameter line).
    """
    from petrun.models.registry import build_base_model
    from petrun.pet import check_model_pet
    cfg = _as_config(cfg)
    pet_config = cfg.get("model.model_config.pet_config")
    check_model_pet(cfg.get("model.arch.type"), cfg.get("model.model_config"), pet_config)
    net = build_base_model(cfg.get("model"), device_target=device_target)
    if pet_config:
        from petrun.pet import apply_pet
        result = apply_pet(net, pet_config)
        net = result.model   # prompt-learning methods wrap the base model
        if report is not None:
            report(result)
    from petrun.parallel.shard import shard_for_config
    shard_for_config(net, cfg)
    return net


def load_checkpoint(model, path: str | Path, strict: bool = True, *, allow_missing=(PET_PATTERN,),
                    key: str = "load_checkpoint") -> dict:
    """Load a .ckpt file (or every .ckpt in a folder, e.g. base + adapter) into `model`.

    strict: unknown checkpoint entries or missing model weights are errors. Adapter parameters
    may be missing from a base checkpoint (a fresh PET run starts from the base alone); an
    adapter-only file must carry every adapter parameter of the model.
    """
    from petrun.ckpt.load import load_into
    from petrun.pet import after_load
    from petrun.pet.virtual import explain_shape_mismatch
    try:
        result = load_into(model, path, strict=strict, allow_missing=allow_missing, key=key)
    except UserError as e:
        raise explain_shape_mismatch(model, e) from None
    if strict:
        _check_whole_adapter(model, result, path, key)
    after_load(model, result)
    return result


def _check_whole_adapter(model, result: dict, path, key: str) -> None:
    """A base checkpoint may leave the adapter out (a fresh run), but one that carries part of it
    would leave the rest at its initial values unnoticed (say, a prefix table without the MLP)."""
    import fnmatch
    adapter = [p.name for p in model.get_parameters() if fnmatch.fnmatchcase(p.name, PET_PATTERN)]
    loaded = set(result["loaded"])
    got = [n for n in adapter if n in loaded]
    if got and len(got) < len(adapter):
        missing = [n for n in adapter if n not in loaded]
        raise UserError(f"the checkpoint holds {len(got)} of the model's {len(adapter)} adapter "
                        f"tensors (missing e.g. {', '.join(missing[:3])}); the rest would keep "
                        "their initial values", file=str(path), key=key,
                        fix="load a checkpoint with the whole adapter, trained with this "
                            "pet_config")


def logits(model, input_ids) -> np.ndarray:
    """fp32 logits [batch, seq, vocab] for integer token ids [batch, seq]."""
    import mindspore as ms
    ids = np.asarray(input_ids, dtype=np.int32)
    if ids.ndim == 1:
        ids = ids[None, :]
    model.set_train(False)
    out = model(ms.Tensor(ids))
    return out.asnumpy().astype(np.float32)


# MindFormers' Trainer (task/model/pet_method/...), in a module of its own: petrun/trainer.py.
from petrun.trainer import Trainer  # noqa: E402,F401  (pure python until a verb runs)
