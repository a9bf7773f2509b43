"""MindFormers r1.0–r1.3 keys without the shared folder: petrun's own fixtures
(tests/assets/configs/mindformers_keys/, written for these tests) carry each key that real
MindFormers files needed, and overrides switch on the ones petrun must refuse."""
from __future__ import annotations

import pytest

import tests.config.test_mindformers_configs as mf_files
from petrun.config import load_config
from petrun.config import mindformers_keys as mf
from petrun.config.schema import ConfigError
from petrun.errors import UserError
from petrun.models.registry import build_config
from tests.config.test_mindformers_configs import REPO

FIX = REPO / "tests" / "assets" / "configs" / "mindformers_keys"
LLAMA = FIX / "llama2_r1_0_keys.yaml"
GLM2 = FIX / "glm2_r1_0_keys.yaml"
GPT2 = REPO / "configs" / "gpt2" / "lora_gpt2_tiny.yaml"
MC = "model.model_config"


def _error(path, *overrides) -> str:
    with pytest.raises(UserError) as e:
        load_config(path, list(overrides))
    return " ".join(str(e.value).split())


def test_r1_0_llama2_fixture_validates_and_lists_its_keys_as_ignored():
    cfg = load_config(LLAMA)
    for key in ("runner_wrapper.enable_check_overflow", f"{MC}.compute_in_2d",
                f"{MC}.pretrain_seqlen", f"{MC}.use_kvcache_op", f"{MC}.is_flexible_shape",
                f"{MC}.use_incre_flash_attention", f"{MC}.is_sample_acceleration",
                f"{MC}.quantization_config", "processor.tokenizer.model_max_length",
                "train_dataset.max_seq_length", "train_dataset.eod_reset", "infer",
                "context.jit_level"):
        assert key in cfg.ignored, key


def test_r1_0_glm2_fixture_validates_and_lists_its_keys_as_ignored():
    cfg = load_config(GLM2)
    for key in ("no_recompute_layers", "use_incre_flash_attention", "mask_type",
                "embedding_type", "prefix_name", "use_kvcache_op", "is_flexible_shape"):
        assert f"{MC}.{key}" in cfg.ignored, key
    assert "moe_config" in cfg.ignored          # expert_num 1: a dense model, nothing to do


def test_checkpoint_mointor_is_read_as_checkpoint_monitor():
    """MindFormers' CheckpointMointor (its class name until r1.1.0) must save checkpoints as
    the file says: the run looks for CheckpointMonitor, so the type is rewritten on load."""
    cfg = load_config(LLAMA)
    types = [cb["type"] for cb in cfg.get("callbacks")]
    assert types == ["MFLossMonitor", "CheckpointMonitor"]
    assert cfg.get("callbacks.1.save_checkpoint_steps") == 7
    err = _error(LLAMA, "callbacks.1.type=CheckpointMonitr")
    assert "unknown callback type 'CheckpointMonitr'" in err


def test_max_length_bounds_generation_like_mindformers():
    # GenerationConfig: max_length overrides max_decode_length (both prompt + new tokens).
    assert build_config(load_config(LLAMA).get("model")).max_decode_length == 200
    cfg = load_config(LLAMA, [f"~{MC}.max_length", f"{MC}.max_decode_length=99"])
    assert build_config(cfg.get("model")).max_decode_length == 99
    assert "must be positive" in _error(LLAMA, f"{MC}.max_length=0")


@pytest.mark.parametrize("path", [LLAMA, GLM2, GPT2], ids=["llama2", "glm2", "gpt2"])
@pytest.mark.parametrize("key", sorted(mf.MODEL_CONFIG_IGNORED))
def test_every_recorded_model_config_key_is_accepted_for_every_family(path, key):
    cfg = load_config(path, [f"{MC}.{key}=1"])
    assert f"{MC}.{key}" in cfg.ignored


@pytest.mark.parametrize("section,table", [
    ("runner_wrapper", mf.RUNNER_WRAPPER_IGNORED), ("train_dataset", mf.DATASET_IGNORED),
    ("processor.tokenizer", mf.TOKENIZER_IGNORED), ("context", mf.CONTEXT_IGNORED),
    ("parallel", mf.PARALLEL_IGNORED), ("parallel_config", mf.PARALLEL_CONFIG_IGNORED),
    ("callbacks.1", mf.CHECKPOINT_MONITOR_IGNORED), ("callbacks.0", mf.LOSS_MONITOR_IGNORED),
])
def test_every_recorded_section_key_is_accepted(section, table):
    keys = sorted(table)
    cfg = load_config(LLAMA, [f"{section}.{k}=1" for k in keys])
    assert {f"{section}.{k}" for k in keys} <= set(cfg.ignored)


def test_every_table_entry_names_its_release_and_reason():
    releases = ("r1.0", "r1.1.0", "r1.2.0", "r1.3.0")
    tables = [v for k, v in vars(mf).items() if k.endswith("_IGNORED") and isinstance(v, dict)]
    tables += [v for k, v in vars(mf).items() if k.endswith("_REFUSED")]
    assert len(tables) >= 12
    for table in tables:
        for key, entry in table.items():
            assert entry.since in releases, key
            assert entry.source and (getattr(entry, "why", None) or entry.reason), key
            assert getattr(entry, "until", "") in ("",) + releases, key


@pytest.mark.parametrize("override,key,reason", [
    (f"{MC}.quantization_config={{quant_method: rtn, weight_dtype: int8}}",
     f"{MC}.quantization_config", "petrun does not quantize"),
    (f"{MC}.quant=w8a16", f"{MC}.quant", "petrun does not quantize"),
    (f"{MC}.moe_config={{expert_num: 8}}", f"{MC}.moe_config", "petrun's models are dense"),
    ("moe_config={expert_num: 8}", "moe_config", "petrun's models are dense"),
    (f"{MC}.num_beams=4", f"{MC}.num_beams", "beam search"),
    ("train_dataset.eod_reset=True", "train_dataset.eod_reset", "EOD"),
    ("callbacks.1.enc_key=secret", "callbacks.1.enc_key", "encrypts the checkpoint"),
    ("processor.tokenizer.sp_model_kwargs={enable_sampling: True}",
     "processor.tokenizer.sp_model_kwargs", "change the token ids"),
])
def test_keys_that_would_change_results_are_refused_with_the_reason(override, key, reason):
    with pytest.raises(ConfigError) as e:
        load_config(LLAMA, [override])
    problem, = e.value.problems
    assert problem.key == key
    assert reason in problem.message and "Fix:" in problem.message
    assert problem.suggestion is None                       # no misleading "did you mean"
    assert e.value.file == str(LLAMA)


@pytest.mark.parametrize("mode", ["predict", "eval"])
def test_quantization_is_ignored_with_a_note_for_inference(mode):
    cfg = load_config(LLAMA, [f"run_mode={mode}",
                              f"{MC}.quantization_config={{quant_method: rtn, weight_dtype: int8}}"])
    (note,) = [k for k in cfg.ignored if k.startswith(f"{MC}.quantization_config")]
    assert "not quantized" in note and "unquantized weights" in note


@pytest.mark.parametrize("override", [f"{MC}.quantization_config=null", f"{MC}.quant=''",
                                      f"{MC}.moe_config={{expert_num: 1}}", f"{MC}.num_beams=1",
                                      "train_dataset.eod_reset=False", "callbacks.1.enc_key=null"])
def test_the_same_keys_switched_off_are_accepted(override):
    key = override.split("=")[0]
    assert key in load_config(LLAMA, [override]).ignored


@pytest.mark.parametrize("override,quoted,instead", [
    ("model.arch.type=GPT2ForSequenceClassification", "'GPT2ForSequenceClassification'",
     "GPT2LMHeadModel"),
    ("model.arch.type=ParallelLlamaForCausalLM", "'ParallelLlamaForCausalLM'", "LlamaForCausalLM"),
    (f"{MC}.type=LlmBoostConfig", "'LlmBoostConfig'", "LlamaConfig"),
    (f"{MC}.pet_config={{pet_type: slora, adapter_path: a.json}}", "'slora'", "lora"),
    ("train_dataset.data_loader.type=ToolAlpacaDataLoader", "'ToolAlpacaDataLoader'",
     "MindDataset"),
    ("model.arch.type=LlamaForCasualLM", "'LlamaForCasualLM'", "LlamaForCausalLM"),
])
def test_unsupported_values_are_quoted_with_what_petrun_supports(override, quoted, instead):
    err = _error(LLAMA, override)
    assert quoted in err and "petrun supports" in err and instead in err


def test_missing_folder_fails_in_ci_and_skips_locally(monkeypatch, tmp_path):
    monkeypatch.setattr(mf_files, "MF_DIR", tmp_path / "absent")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(BaseException) as e:     # skip and fail are BaseExceptions: tell them apart
        mf_files._mf_dir()
    assert e.type is pytest.fail.Exception
    monkeypatch.delenv("CI")
    with pytest.raises(BaseException) as e:
        mf_files._mf_dir()
    assert e.type is pytest.skip.Exception
