"""Which YAML a model name + pet_method runs with, as MindFormers' Trainer picks one.

MindFormers' Trainer(task, model='glm2_6b', pet_method='ptuning2') looks up the model-book name
'glm2_6b_ptuning2' and runs its shipped YAML (configs/glm2/run_glm2_6b_ptuning2.yaml). petrun does
the same with its own copies of those files (configs/<family>/, each naming its MindFormers source
in its header); the model's sizes, weights and tokenizer then come from the local model store.

For a family × method without a shipped MindFormers file, the family's base YAML gets the default
pet_config below: MindFormers' pet_config.py defaults where the method is MindFormers' (ptuning2,
prefixtuning), its shipped values for another size of the family where one exists, and for
petrun-only methods (prompt_tuning, ptuning, ia3, adapter) PEFT's defaults for that architecture.
"""
from __future__ import annotations

from pathlib import Path

from petrun.errors import UserError

# (family or store size name, pet_method or None) → YAML under configs/
RECIPES = {
    ("gpt2", None): "gpt2/run_gpt2.yaml",
    # The seed documents' GPT-2 LoRA (rank 8, alpha 16, dropout 0.1, '.*dense1|.*dense2|.*dense3');
    # MindFormers' run_gpt2_lora.yaml ships rank 64 / alpha 128 on '.*dense1.*|.*dense3.*'.
    ("gpt2", "lora"): "gpt2/lora_gpt2.yaml",
    ("glm2", None): "glm2/glm2_base.yaml",
    ("glm2", "lora"): "glm2/lora_glm2_6b.yaml",            # run_glm2_6b_lora*.yaml
    ("glm2", "ptuning2"): "glm2/ptuning2_glm2_6b.yaml",    # run_glm2_6b_ptuning2.yaml (≤ r1.1.0)
    ("llama2", None): "llama2/llama2_base.yaml",
    ("llama2", "lora"): "llama2/lora_llama2_7b.yaml",
    ("llama2_13b", "lora"): "llama2/lora_llama2_13b.yaml",
}

PET_DEFAULTS = {
    # MindFormers' finetune_llama2_7b_ptuning2.yaml / finetune_llama2_7b_prefixtuning.yaml
    ("llama2", "ptuning2"): {"pre_seq_len": 16, "prefix_projection": True, "projection_dim": 128,
                             "dropout_prob": 0.01},
    ("llama2", "prefixtuning"): {"prefix_token_num": 16, "mid_dim": 512, "dropout_rate": 0.01},
    # MindFormers' pet_config.py defaults
    ("gpt2", "ptuning2"): {"pre_seq_len": 128, "prefix_projection": False, "projection_dim": 128,
                           "dropout_prob": 0.01},
    ("gpt2", "prefixtuning"): {"prefix_token_num": 128, "mid_dim": 512, "dropout_rate": 0.1},
    ("glm2", "prefixtuning"): {"prefix_token_num": 128, "mid_dim": 512, "dropout_rate": 0.1},
    # PEFT's per-architecture IA3 targets (k, v and the FFN output; FFN output scales its input)
    ("llama2", "ia3"): {"target_modules": ".*wk|.*wv|.*w2", "feedforward_modules": ".*w2"},
    ("glm2", "ia3"): {"target_modules": ".*query_key_value|.*dense_4h_to_h",
                      "feedforward_modules": ".*dense_4h_to_h"},
    ("llama2", "adapter"): {"target_modules": ".*wo|.*w2"},
}
PETRUN_ONLY = ("prompt_tuning", "ptuning")   # their config classes' defaults need no targets


def configs_dir() -> Path:
    """petrun's shipped configs (package data; `configs/` in a checkout links to them)."""
    from petrun.config.shipped import shipped_dir
    return shipped_dir()


def recipe(family: str, size_name: str, method: str | None) -> tuple[Path, dict | None]:
    """(YAML path, pet_config to set or None) for a model of `family` (store name `size_name`)."""
    from petrun.pet.config import PET_CONFIGS
    if method is not None and method not in PET_CONFIGS:
        raise UserError(f"pet_method {method!r} is not a PET method petrun has", key="pet_method",
                        fix=f"use one of {', '.join(PET_CONFIGS)} (or leave it out for a full "
                            "finetune)")
    rel = RECIPES.get((size_name, method)) or RECIPES.get((family, method))
    pet = None
    if rel is None:
        pet = PET_DEFAULTS.get((family, method))
        if pet is None and method not in PETRUN_ONLY:
            raise UserError(f"petrun has no default pet_config for {method} on {family}",
                            key="pet_method",
                            fix="pass args=<your YAML> with model.model_config.pet_config set "
                                f"(pet_type: {method} and its target_modules)")
        pet = {"pet_type": method, **(pet or {})}
        rel = RECIPES[(family, None)]
    path = configs_dir() / rel
    if not path.is_file():
        raise UserError("petrun's recipe YAML is missing from its installed package data",
                        file=str(path), key="model",
                        fix="pass args=<a petrun YAML> instead of relying on the model name's "
                            "default recipe")
    return path, pet


def default_pet_config(family: str, method: str) -> dict:
    """The pet_config pet_method=method alone means for `family`: its recipe YAML's, else the
    defaults above."""
    path, pet = recipe(family, family, method)
    if pet is not None:
        return pet
    from petrun.config import load_config
    return dict(load_config(path).get("model.model_config.pet_config"))
