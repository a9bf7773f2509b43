"""MindFormers' own YAML (../shared/mindformers-configs, r1.1.0 and r1.3.0, unchanged) through
`petrun config validate`: files of supported models pass, the unsupported ones the folder's README
lists are refused with exit 2 and the unsupported value quoted.

The bulk goes through the function the CLI calls (fast); a few go through the real CLI.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from petrun.config import load_config
from petrun.errors import UserError
from petrun.preflight import PreflightError, config_findings

REPO = Path(__file__).resolve().parents[2]
MF_DIR = REPO / ".." / "shared" / "mindformers-configs"

# The README's unsupported files -> text the refusal must contain (the quoted value, or for the
# quantization predict configs petrun's stated reason: it does not quantize).
REFUSED = {
    "r1.1.0/configs/gpt2/run_gpt2_txtcls.yaml": "'GPT2ForSequenceClassification'",
    "r1.3.0/configs/gpt2/run_gpt2_txtcls.yaml": "'GPT2ForSequenceClassification'",
    "r1.3.0/configs/gpt2/finetune_gpt2_small_txtcls_fp16.yaml": "'GPT2ForSequenceClassification'",
    "r1.3.0/configs/llama2/predict_llama2_13b_ptq.yaml": "'ParallelLlamaForCausalLM'",
    "r1.3.0/research/llm_boost/predict_llama2_7b_llm_boost.yaml": "'LlmBoostConfig'",
    "r1.3.0/research/llm_boost/predict_qwen2_7b_instruct_llm_boost.yaml": "'LlmBoostConfig'",
    "r1.3.0/configs/llama2/predict_llama2_7b_slora.yaml": "'slora'",
    "r1.3.0/configs/glm3/run_glm3_6b_multiturn_finetune_800T_A2_64G.yaml": "'ToolAlpacaDataLoader'",
    "r1.3.0/configs/llama2/predict_llama2_7b_ptuning2.yaml": "'Flase'",
}
# Predict configs of a supported model with a quantization_config: they validate (petrun predicts
# unquantized and lists the key as ignored, saying so); a training run of the same file is refused.
QUANTIZED_PREDICT = ["r1.3.0/configs/llama2/predict_llama2_13b_rtn.yaml",
                     "r1.3.0/configs/llama2/predict_llama2_70b_rtn.yaml",
                     "r1.3.0/configs/llama2/predict_llama2_13b_smooth_quant.yaml",
                     "r1.3.0/configs/llama2/predict_llama2_70b_smooth_quant.yaml"]


@pytest.mark.parametrize("rel", QUANTIZED_PREDICT)
def test_quantized_predict_configs_validate_and_their_training_is_refused(rel):
    path = _mf_dir() / rel
    assert _validate(path) is None
    note = [k for k in load_config(path).ignored
            if k.startswith("model.model_config.quantization_config")]
    assert note and "not quantized" in note[0], note
    with pytest.raises(UserError, match="petrun does not quantize"):
        load_config(path, ["run_mode=finetune"])


def _mf_dir() -> Path:
    if not MF_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{MF_DIR} is missing; CI must provide ../shared/mindformers-configs")
        pytest.skip(f"{MF_DIR} not present on this machine")
    return MF_DIR


def _files() -> list[str]:
    if not MF_DIR.is_dir():
        return ["<missing>"]
    return sorted(str(p.relative_to(MF_DIR)) for p in MF_DIR.rglob("*.yaml"))


def _validate(path: Path) -> str | None:
    """What `petrun config validate` decides: None when valid, else the error text (exit 2)."""
    try:
        cfg = load_config(path)
        problems, _ = config_findings(cfg)
        if problems:
            raise PreflightError(problems, 0.0)
    except UserError as e:
        return str(e)
    return None


def test_the_folder_is_there_and_holds_both_releases():
    root = _mf_dir()
    files = _files()
    assert len(files) >= 100
    assert any(f.startswith("r1.1.0/") for f in files) and any(f.startswith("r1.3.0/") for f in files)
    missing = [f for f in REFUSED if not (root / f).is_file()]
    assert not missing, f"README's unsupported files not found: {missing}"


@pytest.mark.parametrize("rel", _files())
def test_validate_every_mindformers_file(rel):
    root = _mf_dir()
    error = _validate(root / rel)
    if rel in REFUSED:
        assert error is not None, f"{rel} should be refused"
        assert REFUSED[rel] in error, error
        assert "Traceback" not in error
    else:
        assert error is None, f"{rel} should validate unchanged:\n{error}"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "petrun", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("rel", [
    "r1.1.0/configs/llama2/lora_llama2_7b.yaml",          # CheckpointMointor, enable_check_overflow
    "r1.3.0/configs/glm3/predict_glm3_6b.yaml",           # ChatGLM2Config + max_length
    "r1.1.0/configs/glm2/run_glm2_6b_ptuning2.yaml",
])
def test_cli_validate_show_and_plan_pass(rel):
    path = str(_mf_dir() / rel)
    for args in (["config", "validate", "--config", path], ["config", "show", "--config", path],
                 ["plan", "--config", path]):
        r = _cli(*args)
        assert r.returncode == 0, f"{args}: {r.stdout}{r.stderr}"
    assert "CheckpointMointor" not in _cli("config", "show", "--config", path).stdout


@pytest.mark.parametrize("rel", [
    "r1.3.0/configs/gpt2/run_gpt2_txtcls.yaml",
    "r1.3.0/configs/llama2/predict_llama2_13b_ptq.yaml",
    "r1.3.0/configs/llama2/predict_llama2_7b_slora.yaml",
])
def test_cli_refuses_unsupported_with_exit_2_and_the_value(rel):
    r = _cli("config", "validate", "--config", str(_mf_dir() / rel))
    assert r.returncode == 2, r.stdout + r.stderr
    err = " ".join(r.stderr.split())
    assert REFUSED[rel] in err and "Traceback" not in r.stderr
    assert "petrun supports" in err or "Fix:" in err      # says what to do instead
    assert "did you mean" not in err


def test_plan_on_a_sample_of_each_family():
    """plan is analytic (no MindSpore graph): it must run on every family's real files."""
    from typer.testing import CliRunner

    from petrun.cli.main import app
    root = _mf_dir()
    runner = CliRunner()
    for rel in ("r1.3.0/configs/llama2/finetune_llama2_7b.yaml",
                "r1.3.0/configs/glm2/run_glm2_6b_lora_800T_A2_64G.yaml",
                "r1.3.0/configs/glm3/finetune_glm3_6b_bf16.yaml",
                "r1.1.0/configs/gpt2/run_gpt2_lora.yaml",
                "r1.3.0/research/glm32k/finetune_glm32k.yaml"):
        res = runner.invoke(app, ["plan", "--config", str(root / rel)])
        assert res.exit_code == 0 and res.exception is None, (rel, res.output, res.exception)
        assert "GiB" in res.output or "MiB" in res.output
