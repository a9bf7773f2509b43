"""petrun.models registry: lazy imports, name → builder, user-facing errors."""
import subprocess
import sys

import pytest

from petrun.errors import UserError
from petrun.models import build_base_model, build_config, known_archs
from petrun.models.configs import LlamaConfig


def _section(**model_config):
    return {"arch": {"type": "LlamaForCausalLM"},
            "model_config": {"type": "LlamaConfig", "hidden_size": 32, "num_layers": 1,
                             "num_heads": 4, "vocab_size": 50, "compute_dtype": "float32",
                             "param_init_type": "float32", **model_config}}


def test_importing_models_package_does_not_import_mindspore():
    code = ("import sys, petrun.models, petrun.models.registry, petrun.models.configs; "
            "assert 'mindspore' not in sys.modules, 'mindspore imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_known_archs():
    assert "LlamaForCausalLM" in known_archs()


def test_build_config_applies_yaml_quirks():
    cfg = build_config(_section(rms_norm_eps="1e-6", n_kv_heads="None"))
    assert isinstance(cfg, LlamaConfig)
    assert cfg.rms_norm_eps == 1e-6 and cfg.n_kv_heads is None and cfg.hidden_size == 32


def test_config_type_defaults_from_arch():
    section = _section()
    del section["model_config"]["type"]
    assert isinstance(build_config(section), LlamaConfig)


def test_build_base_model():
    net = build_base_model(_section(), device_target="CPU")
    assert type(net).__name__ == "LlamaForCausalLM"
    names = [p.name for p in net.get_parameters()]
    assert names[0] == "model.tok_embeddings.embedding_weight" and names[-1] == "lm_head.weight"
    assert net.model.layers[0].attention.wq.weight.shape == (32, 32)


def test_unknown_arch_is_a_user_error():
    section = _section()
    section["arch"]["type"] = "LlamaForCausalLMM"
    with pytest.raises(UserError) as err:
        build_base_model(section)
    assert err.value.key == "model.arch.type"
    assert "LlamaForCausalLMM" in str(err.value) and "LlamaForCausalLM (" in str(err.value)


def test_mismatched_config_type_is_a_user_error():
    with pytest.raises(UserError) as err:
        build_config(_section(type="GPT2Config"))
    assert err.value.key == "model.arch.type"
    assert "GPT2Config" in str(err.value) and "LlamaConfig" in str(err.value)
