"""The analytic parameter tables equal the real MindSpore models, name for name.

petrun.models.shapes lets the planner and the pre-flight size a model without building it; these
tests build the real model for tiny configs of every registered family and compare names, order,
shapes and dtypes, so a model change that is not mirrored in the table fails here.
"""
import pytest

from petrun.models import shapes
from petrun.models.configs import MODEL_CONFIGS
from petrun.models.registry import arch_entry, build_base_model, known_archs

LLAMA = dict(hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2, vocab_size=97,
             seq_length=16, multiple_of=16, compute_dtype="float32", param_init_type="float32")
GLM2 = dict(hidden_size=32, num_layers=2, num_attention_heads=4, kv_channels=8,
            multi_query_group_num=2, ffn_hidden_size=40, padded_vocab_size=97, seq_length=16,
            compute_dtype="float32", param_init_type="float32")
GPT2 = dict(hidden_size=32, num_layers=2, num_heads=4, vocab_size=97, seq_length=16,
            compute_dtype="float32", param_init_type="float32")

CASES = [
    ("LlamaConfig", LLAMA),
    ("LlamaConfig", {**LLAMA, "n_kv_heads": None, "qkv_has_bias": True, "attn_proj_has_bias": True}),
    ("LlamaConfig", {**LLAMA, "tie_word_embeddings": True, "intermediate_size": 50}),
    ("LlamaConfig", {**LLAMA, "ffn_dim_multiplier": 1.3, "multiple_of": 8}),
    # bf16 has no CPU kernels: petrun builds these fields in fp32 there, and the table must agree.
    ("LlamaConfig", {**LLAMA, "param_init_type": "bfloat16", "embedding_init_type": "float16",
                     "layernorm_compute_type": "float16"}),
    ("ChatGLM2Config", GLM2),
    ("ChatGLM2Config", {**GLM2, "add_bias_linear": True, "multi_query_attention": False,
                        "post_layer_norm": False}),
    ("ChatGLM2Config", {**GLM2, "param_init_type": "float16", "add_qkv_bias": False}),
    ("GPT2Config", GPT2),
    ("GPT2Config", {**GPT2, "param_init_type": "float16", "max_position_embeddings": 24}),
]


def _arch(config_type):
    return next(a for a in known_archs() if arch_entry(a).config_type == config_type)


def _dtype_name(dtype) -> str:
    return {"Float32": "float32", "Float16": "float16", "BFloat16": "bfloat16"}[str(dtype)]


def test_every_registered_family_has_a_table():
    missing = sorted({arch_entry(a).config_type for a in known_archs()}
                     - set(shapes.known_families()))
    assert not missing, f"add parameter tables for {missing} in petrun/models/shapes.py"


@pytest.mark.parametrize("config_type,values", CASES,
                         ids=[f"{t}-{i}" for i, (t, _) in enumerate(CASES)])
def test_table_equals_real_model(config_type, values):
    if config_type not in MODEL_CONFIGS:
        pytest.skip(f"{config_type} is not in this build")
    cfg = MODEL_CONFIGS[config_type](**values)
    cfg.normalize()
    net = build_base_model({"arch": {"type": _arch(config_type)}, "model_config": cfg},
                           device_target="CPU")
    real = [(p.name, tuple(p.shape), _dtype_name(p.dtype)) for p in net.get_parameters()]
    table = [(n, s.shape, s.dtype) for n, s in shapes.param_shapes(cfg, "CPU").items()]
    assert table == real


def test_ascend_keeps_configured_dtypes():
    cfg = MODEL_CONFIGS["LlamaConfig"](**{**LLAMA, "param_init_type": "bfloat16"})
    on_ascend = shapes.param_shapes(cfg, "Ascend")
    on_cpu = shapes.param_shapes(cfg, "CPU")
    assert on_ascend["model.layers.0.attention.wq.weight"].dtype == "bfloat16"
    assert on_cpu["model.layers.0.attention.wq.weight"].dtype == "float32"
    assert on_ascend["model.norm_out.weight"].dtype == "float32"   # layernorm_compute_type


def test_linear_flags_mark_exactly_the_pet_targetable_layers():
    from petrun.pet.base import linear_types
    for config_type, values in (("LlamaConfig", LLAMA), ("ChatGLM2Config", GLM2),
                                ("GPT2Config", GPT2)):
        if config_type not in MODEL_CONFIGS:
            continue
        cfg = MODEL_CONFIGS[config_type](**values)
        net = build_base_model({"arch": {"type": _arch(config_type)}, "model_config": cfg},
                               device_target="CPU")
        real = {f"{path}.weight" for path, cell in net.cells_and_names()
                if isinstance(cell, linear_types())}
        # PET targets [out, in] Linear weights ("linear") and GPT2's [in, out] ones ("matmul")
        table = {n for n, s in shapes.param_shapes(cfg, "CPU").items() if s.matmul}
        assert table == real, config_type
        in_out = {n for n, s in shapes.param_shapes(cfg, "CPU").items() if s.kind == "matmul"}
        assert all(n.endswith(("projection.weight", "mapping.weight")) for n in in_out), in_out
