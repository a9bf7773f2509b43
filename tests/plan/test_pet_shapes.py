"""The planner's name-based PET transform equals the real apply on tiny models.

petrun.plan.pet re-runs petrun.pet's MindFormers targeting rules over parameter names; here the
real models are built and transformed with petrun.pet.apply_pet and every outcome is compared:
parameter names and shapes, what stays trainable, per-alternative hits and the dead-pattern error.
"""
import re

import pytest

from petrun.errors import UserError
from petrun.models import shapes
from petrun.models.configs import MODEL_CONFIGS
from petrun.models.registry import arch_entry, build_base_model, known_archs
from petrun.pet import apply_pet, parse_pet_config
from petrun.pet import base as pet_base
from petrun.plan.pet import apply_pet_shapes, match_names
from tests.plan.test_shapes import GLM2, GPT2, LLAMA

LORA_CASES = [
    ("LlamaConfig", LLAMA, {"target_modules": ".*wq|.*wv"}),
    ("LlamaConfig", LLAMA, {"target_modules": ".*wq|.*wk|.*wv|.*wo", "lora_rank": 4}),
    ("LlamaConfig", LLAMA, {"target_modules": "w[123]", "exclude_layers": [".*w2"]}),
    ("LlamaConfig", LLAMA, {"target_modules": ".*w.*", "freeze_exclude": ["*norm*"],
                            "freeze_include": ["*layers.1*"]}),
    ("LlamaConfig", {**LLAMA, "qkv_has_bias": True}, {"target_modules": ".*wq", "param_init_type": "float16"}),
    ("ChatGLM2Config", GLM2, {"target_modules": ".*query_key_value*"}),
    ("ChatGLM2Config", GLM2, {"target_modules": ".*dense.*|.*output_layer"}),
    ("GPT2Config", GPT2, {"target_modules": ".*dense1.*|.*dense3.*"}),
    # GPT-2's [in, out] layers, as MindFormers adapts them: A [r, in], B [out, r]
    ("GPT2Config", GPT2, {"target_modules": ".*dense2|.*projection|.*mapping", "lora_rank": 3}),
]
DEAD = [
    ("LlamaConfig", LLAMA, ".*wq|.*wz"),                      # misspelt alternative
    ("LlamaConfig", LLAMA, "model\\.layers\\.0\\.attention\\.wq"),   # dotted path
    ("LlamaConfig", LLAMA, "wq_proj"),                         # nothing close
    ("LlamaConfig", LLAMA, ".*attention|.*wq"),                 # container blocks the walk
    ("LlamaConfig", LLAMA, ".*lm_head"),                       # outside the base submodule
    ("GPT2Config", GPT2, ".*dense1|.*attention"),              # a container blocks the walk
]


def test_virtual_tokens_must_fit_gpt2_positions():
    arch, net, table, dims = _build("GPT2Config", GPT2)
    pet_cfg = parse_pet_config({"pet_type": "prompt_tuning", "num_virtual_tokens": 4})
    with pytest.raises(UserError) as real:
        apply_pet(net, pet_cfg)
    with pytest.raises(UserError) as planned:
        apply_pet_shapes(table, pet_cfg, dims, arch, "CPU")
    assert str(planned.value) == str(real.value)


def _arch(config_type):
    return next(a for a in known_archs() if arch_entry(a).config_type == config_type)


def _build(config_type, values):
    if config_type not in MODEL_CONFIGS:
        pytest.skip(f"{config_type} is not in this build")
    cfg = MODEL_CONFIGS[config_type](**values)
    cfg.normalize()
    arch = _arch(config_type)
    net = build_base_model({"arch": {"type": arch}, "model_config": cfg}, device_target="CPU")
    table = shapes.param_shapes(cfg, "CPU")
    dims = shapes.model_dims(cfg, "CPU")
    return arch, net, table, dims


# Every other built method on each family it supports (petrun.pet.METHODS).
OTHER_CASES = [
    ("LlamaConfig", LLAMA, {"pet_type": "ia3", "target_modules": ".*wk|.*wv|.*w2",
                            "feedforward_modules": ".*w2"}),
    ("GPT2Config", GPT2, {"pet_type": "ia3", "target_modules": ".*dense2|.*dense3|.*projection",
                          "feedforward_modules": ".*projection"}),
    ("LlamaConfig", LLAMA, {"pet_type": "adapter", "target_modules": ".*wo|.*w2",
                            "bottleneck_size": 4}),
    ("GPT2Config", GPT2, {"pet_type": "adapter", "target_modules": ".*projection",
                          "bottleneck_size": 4}),
    ("LlamaConfig", LLAMA, {"pet_type": "ptuning2", "pre_seq_len": 3}),
    ("ChatGLM2Config", GLM2, {"pet_type": "ptuning2", "pre_seq_len": 3, "prefix_projection": True,
                              "projection_dim": 5}),
    ("LlamaConfig", LLAMA, {"pet_type": "prefixtuning", "prefix_token_num": 3, "mid_dim": 6}),
    ("GPT2Config", {**GPT2, "max_position_embeddings": 24},
     {"pet_type": "prompt_tuning", "num_virtual_tokens": 4}),
    ("LlamaConfig", LLAMA, {"pet_type": "ptuning", "num_virtual_tokens": 4,
                            "encoder_hidden_size": 6}),
    ("ChatGLM2Config", GLM2, {"pet_type": "ptuning", "num_virtual_tokens": 4,
                              "encoder_hidden_size": 6, "encoder_reparameterization_type": "LSTM"}),
]
CASES = ([(t, v, {"pet_type": "lora", "lora_rank": 8, **lora}) for t, v, lora in LORA_CASES]
         + OTHER_CASES)


def test_every_built_method_has_planner_shapes():
    from petrun.pet import METHODS
    from petrun.plan.pet import PET_SHAPES
    assert set(METHODS) <= set(PET_SHAPES), "add the method's shapes to petrun/plan/pet.py"


@pytest.mark.parametrize("config_type,values,pet", CASES,
                         ids=[f"{p['pet_type']}-{t}-{i}" for i, (t, _, p) in enumerate(CASES)])
def test_pet_shapes_and_trainable_equal_real_apply(config_type, values, pet):
    from petrun.pet import METHODS
    if pet["pet_type"] not in METHODS:
        pytest.skip(f"{pet['pet_type']} is not built in this tree")
    arch, net, table, dims = _build(config_type, values)
    pet_cfg = parse_pet_config(pet)
    planned = apply_pet_shapes(table, pet_cfg, dims, arch, "CPU")
    report = apply_pet(net, pet_cfg)
    model = report.model if getattr(report, "model", None) is not None else net
    real = {p.name: (tuple(p.shape), str(p.dtype).lower()) for p in model.get_parameters()}
    assert {n: (s.shape, s.dtype) for n, s in planned.params.items()} == real
    assert sorted(planned.trainable) == sorted(p.name for p in model.trainable_params())
    assert planned.targets == list(report.targets)
    assert (planned.trainable_count, planned.total_count) == (report.trainable, report.total)
    assert planned.exact


@pytest.mark.parametrize("config_type,values,lora", LORA_CASES[:3] + LORA_CASES[5:],
                         ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(LORA_CASES[:3] + LORA_CASES[5:])])
def test_alternative_hits_equal(config_type, values, lora):
    _, net, table, _ = _build(config_type, values)
    pattern, exclude = lora["target_modules"], lora.get("exclude_layers")
    assert match_names(table, pattern, exclude).hits == pet_base.alternative_hits(net, pattern, exclude)


@pytest.mark.parametrize("config_type,values,pattern", DEAD,
                         ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(DEAD)])
def test_dead_patterns_fail_like_the_real_apply(config_type, values, pattern):
    arch, net, table, dims = _build(config_type, values)
    pet_cfg = parse_pet_config({"pet_type": "lora", "target_modules": pattern})
    with pytest.raises(UserError) as real:
        apply_pet(net, pet_cfg)
    with pytest.raises(UserError) as planned:
        apply_pet_shapes(table, pet_cfg, dims, arch, "CPU")
    assert planned.value.key == real.value.key == pet_base.TARGET_KEY
    assert match_names(table, pattern).hits == pet_base.alternative_hits(net, pattern)
    # The explanation names the same dead alternatives and the same fix; only the class name of
    # a blocking container differs (the planner has no cells, it says "cell").
    clean = lambda e: re.sub(r"' \([A-Za-z]\w*\)", "' (cell)", e.value.message)  # noqa: E731
    assert clean(planned) == clean(real)
    assert planned.value.fix == real.value.fix
