"""`petrun config validate` refuses what a run's pre-flight refuses, through the same function
(preflight.preflight_checks): for each case, both name the same keys; one case is also checked
against the run itself with the pre-flight skipped, so the parity is not only with ourselves."""
from __future__ import annotations

import subprocess
import sys

import pytest

from petrun.config import load_config
from petrun.preflight import PreflightError, config_findings, run_preflight
from tests.config.test_mindformers_configs import REPO

LLAMA = "configs/llama2/lora_llama2_tiny.yaml"
GLM2 = "configs/glm2/lora_glm2_tiny.yaml"
GLM2_PT2 = "configs/glm2/ptuning2_glm2_tiny.yaml"
GPT2 = "configs/gpt2/lora_gpt2_tiny.yaml"
MC = "model.model_config"

CASES = [
    (GLM2_PT2, [f"{MC}.pet_config.pre_seq_len=128"], f"{MC}.pre_seq_len"),
    (GLM2_PT2, ["train_dataset.packing=True"], "train_dataset.packing"),
    (LLAMA, ["do_eval=True", "eval_step_interval=0", "eval_epoch_interval=0",
             "eval_dataset.data_loader.dataset_dir=data/demo/alpaca_demo_seq256.jsonl"],
     "eval_step_interval"),
    (LLAMA, [f"{MC}.qkv_concat=True"], f"{MC}.qkv_concat"),
    (GPT2, [f"{MC}.post_layernorm_residual=True"], f"{MC}.post_layernorm_residual"),
    (GPT2, [f"{MC}.max_position_embeddings=8"], f"{MC}.max_position_embeddings"),
    (GLM2, [f"{MC}.vocab_size=1000"], f"{MC}.padded_vocab_size"),
    (GLM2, [f"{MC}.use_rearrange_rope=True"], f"{MC}.use_rearrange_rope"),
    (LLAMA, [f"{MC}.pet_config.target_modules=.*wq|.*nothing_here"],
     f"{MC}.pet_config.target_modules"),
]


def _keys(findings) -> set[str]:
    return {f.key for f in findings if f.check not in ("memory", "paths")}


@pytest.mark.parametrize("path,overrides,key", CASES, ids=[c[2].split(".")[-1] for c in CASES])
def test_validate_and_preflight_refuse_the_same_key(path, overrides, key, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(path, overrides)
    verb = "finetune"
    problems, _ = config_findings(cfg, verb)
    with pytest.raises(PreflightError) as e:
        run_preflight(cfg, verb, device_memory=2 ** 40)
    assert key in _keys(problems)
    assert _keys(problems) == _keys(e.value.findings)


@pytest.mark.parametrize("path", [LLAMA, GLM2, GLM2_PT2, GPT2])
def test_the_shipped_tiny_configs_pass_both(path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(path)
    assert config_findings(cfg, "finetune")[0] == []
    run_preflight(cfg, "finetune", device_memory=2 ** 40)


def test_validate_warns_but_passes_a_path_of_another_machine(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(LLAMA, ["load_checkpoint=/path/to/llama2_7b.ckpt"])
    problems, warnings = config_findings(cfg, "finetune")
    assert problems == []
    assert any("load_checkpoint" in w and "does not exist" in w for w in warnings)
    with pytest.raises(PreflightError):
        run_preflight(cfg, "finetune", device_memory=2 ** 40)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "petrun", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_validate_refuses_what_the_run_itself_refuses(tmp_path):
    """The issue's example: ptuning2 pre_seq_len=128 on the tiny GLM2 config. validate exits 2,
    and so does finetune with its pre-flight skipped (the model build's own check)."""
    override = f"{MC}.pet_config.pre_seq_len=128"
    v = _cli("config", "validate", "--config", GLM2_PT2, override)
    assert v.returncode == 2, v.stdout + v.stderr
    assert f"key '{MC}.pre_seq_len'" in v.stderr
    run = _cli("finetune", "--config", GLM2_PT2, override, "--skip-preflight",
               "runner_config.stop_step=1", "--output_dir", str(tmp_path / "out"))
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"key '{MC}.pre_seq_len'" in run.stderr
