"""FlashAttentionScore's documented limits, refused before anything is built when a config
selects it (use_flash_attention on device_target Ascend): the real CLI, `petrun config
validate`, exit 2, one message naming the key and the fix. Oracle for the limits: MindSpore's
mindspore.ops.flash_attention_score docs (query/key/value float16 or bfloat16; head size D a
multiple of 16, at most 512; at most 256 query heads). No card needed: the check is arithmetic on
the config, so it runs on this CPU machine.
"""
import pytest

from petrun.config import load_config
from petrun.models.kernel_choice import flash_attention_errors
from petrun.models.registry import build_config

L7B = "configs/llama2/lora_llama2_7b.yaml"        # Ascend, use_flash_attention True, bf16
GLM2 = "configs/glm2/lora_glm2_6b.yaml"           # Ascend, use_flash_attention True, fp16
GPT2 = "configs/gpt2/run_gpt2.yaml"               # Ascend, fp16


def _validate(cli, config, *overrides):
    res = cli("config", "validate", "--config", config, *overrides, timeout=120)
    return res.returncode, " ".join((res.stdout + res.stderr).split())


@pytest.mark.parametrize("config,overrides,key,says", [
    (L7B, ["model.model_config.compute_dtype=float32"], "model.model_config.compute_dtype",
     "takes float16 or bfloat16 query/key/value only, but compute_dtype is float32"),
    # 4104 / 36 heads = 114: not a multiple of 16
    (L7B, ["model.model_config.hidden_size=4104", "model.model_config.num_heads=36"],
     "model.model_config.hidden_size", "multiple of 16 and at most 512, but hidden_size / "
                                       "num_heads is 114"),
    # 4096 / 4 heads = 1,024 > 512
    (L7B, ["model.model_config.num_heads=4"], "model.model_config.hidden_size",
     "but hidden_size / num_heads is 1024"),
    (GLM2, ["model.model_config.kv_channels=72"], "model.model_config.kv_channels",
     "but kv_channels is 72"),
    (GPT2, ["model.model_config.compute_dtype=float32",
            "model.model_config.use_flash_attention=True"], "model.model_config.compute_dtype",
     "compute_dtype is float32"),
])
def test_validate_refuses_what_flash_attention_cannot_take(cli, config, overrides, key, says):
    rc, text = _validate(cli, config, *overrides)
    assert rc == 2, text
    assert f"key '{key}'" in text and says in text
    assert "use_flash_attention: False" in text and "Traceback" not in text


def test_the_same_configs_pass_as_shipped_or_off_ascend(cli):
    rc, text = _validate(cli, L7B)
    assert rc == 0, text
    # the composite attention has no such limits: off Ascend, or with the switch off
    rc, text = _validate(cli, L7B, "model.model_config.compute_dtype=float32",
                         "model.model_config.use_flash_attention=False")
    assert rc == 0, text


def test_no_errors_where_the_fused_kernel_is_not_selected():
    mc = build_config(load_config(L7B, ["model.model_config.compute_dtype=float32",
                                        "model.model_config.num_heads=4"]).get("model"))
    assert len(flash_attention_errors(mc, "Ascend")) == 2
    assert flash_attention_errors(mc, "CPU") == []
