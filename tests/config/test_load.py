"""Config loading: YAML 1.1 quirks, base_config chains, anchors, overrides, MindFormers flags."""
from pathlib import Path

import pytest

from petrun.config import load_config
from petrun.config.load import load_layered
from petrun.errors import UserError

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "configs"
MF = ASSETS / "mf_lora_llama2_7b.yaml"


def test_mindformers_file_resolves_with_float_learning_rate():
    cfg = load_config(MF)
    lr = cfg.get("lr_schedule.learning_rate")
    assert isinstance(lr, float) and lr == 1e-05
    assert cfg.get("optimizer.eps") == 1e-08
    assert cfg.get("model.model_config.rms_norm_eps") == 1e-05
    assert cfg.get("model.model_config.pet_config.target_modules") == ".*wq|.*wk|.*wv|.*wo"
    # MindFormers keys petrun does not use are accepted and reported as ignored.
    assert "remote_save_url" in cfg.ignored and "profile" in cfg.ignored
    assert any(k.startswith("callbacks.2") for k in cfg.ignored)  # ObsMonitor


def test_exponent_without_dot_is_a_float(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(MF.read_text().replace("learning_rate: 1.e-5\n  lr_end", "learning_rate: 1e-5\n  lr_end")
                 .replace("rms_norm_eps: 1.0e-5", "rms_norm_eps: 2E-6"))
    cfg = load_config(f)
    assert cfg.get("lr_schedule.learning_rate") == 1e-5
    assert isinstance(cfg.get("model.model_config.rms_norm_eps"), float)
    assert cfg.get("model.model_config.rms_norm_eps") == 2e-6


def test_anchor_copies_are_independent_and_relinked_after_override():
    cfg = load_config(MF, ["train_dataset.data_loader.dataset_dir=/data/train.mindrecord"])
    assert cfg.get("train_dataset_task.dataset_config.data_loader.dataset_dir") == "/data/train.mindrecord"
    # eval_dataset was built from its own anchor and must not be touched.
    assert cfg.get("eval_dataset.data_loader.dataset_dir") == ""
    assert cfg.data["train_dataset_task"]["dataset_config"] is not cfg.data["train_dataset"]


def test_base_config_chain_depth_three_merges_in_mindformers_order():
    data, origins = load_layered(ASSETS / "chain" / "leaf.yaml")
    assert "base_config" not in data
    assert data["seed"] == 2                                   # mid overrides root
    # ctx.yaml came after root.yaml in the list: its runner_config REPLACED root's whole section
    # (shallow merge between bases) ...
    assert data["runner_config"] == {"batch_size": 3, "sink_mode": False}
    # ... while a declaring file deep-merges on top of its bases.
    assert data["context"] == {"mode": 1, "device_target": "CPU"}
    mc = data["model"]["model_config"]
    assert (mc["hidden_size"], mc["num_layers"], mc["num_heads"]) == (1024, 4, 32)
    assert mc["pet_config"]["lora_rank"] == 4 and mc["pet_config"]["lora_alpha"] == 16
    assert origins["model.model_config.num_layers"].endswith("leaf.yaml:7")
    assert origins["model.model_config.num_heads"].endswith("mf_lora_llama2_7b.yaml:115")
    assert origins["seed"].endswith("mid.yaml:3")


def test_dotted_overrides_and_delete():
    cfg = load_config(MF, ["model.model_config.pet_config.lora_rank=8", "runner_config.epochs=3",
                           "~model.model_config.top_k", "lr_schedule.warmup_ratio=0.1",
                           "parallel_config.vocab_emb_dp=false"])
    assert cfg.get("model.model_config.pet_config.lora_rank") == 8
    assert cfg.get("runner_config.epochs") == 3
    assert "top_k" not in cfg.get("model.model_config")
    assert cfg.get("lr_schedule.warmup_ratio") == 0.1
    assert cfg.get("parallel_config.vocab_emb_dp") is False
    assert cfg.origins["model.model_config.pet_config.lora_rank"] == "command line"


def test_mindformers_flags_land_on_their_keys():
    cfg = load_config(MF, ["--run_mode", "train", "--load_checkpoint", "/w/llama.ckpt",
                           "--auto_trans_ckpt", "True", "--use_parallel=false",
                           "--train_dataset_dir", "/d/train", "--eval_dataset_dir", "/d/eval",
                           "--src_strategy_path_or_dir", "/s", "--output_dir", "/out",
                           "--device_id", "3", "--seed", "42",
                           "--model.model_config.seq_length", "128"])
    expect = {"run_mode": "train", "load_checkpoint": "/w/llama.ckpt", "auto_trans_ckpt": True,
              "use_parallel": False, "train_dataset.data_loader.dataset_dir": "/d/train",
              "eval_dataset.data_loader.dataset_dir": "/d/eval", "src_strategy_path_or_dir": "/s",
              "output_dir": "/out", "context.device_id": 3, "seed": 42,
              "model.model_config.seq_length": 128}
    for key, value in expect.items():
        assert cfg.get(key) == value, key


@pytest.mark.parametrize("text", ["TRUE", "true", "True"])
def test_flag_booleans_accept_any_case(text):
    assert load_config(MF, ["--use_parallel", text]).get("use_parallel") is True


def test_flag_boolean_rejects_other_words():
    with pytest.raises(UserError, match="--use_parallel expects True or False"):
        load_config(MF, ["--use_parallel", "yes"])


def test_misspelt_key_suggests_the_right_one():
    with pytest.raises(UserError) as e:
        load_config(MF, ["model.model_config.pet_config.lora_rnak=8"])
    msg = str(e.value)
    assert "model.model_config.pet_config.lora_rnak" in msg and "did you mean 'lora_rank'" in msg
    assert "command line" in msg


def test_all_problems_reported_together_with_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(MF.read_text().replace("  epochs: 2", "  epocs: 2")
                 .replace("  batch_size: 2\n  sink_mode", "  batch_size: -2\n  sink_mode"))
    with pytest.raises(UserError) as e:
        load_config(f)
    msg = str(e.value)
    assert "2 problems" in msg
    assert f"{f}:15: runner_config.epocs: unknown key (did you mean 'epochs'?)" in msg
    assert "runner_config.batch_size: must be positive" in msg


def test_python_api_view_gives_attribute_access():
    view = load_config(MF).view()
    assert view.model.model_config.hidden_size == 4096


def test_list_items_are_addressed_by_index():
    cfg = load_config(MF, ["callbacks.1.prefix=mine", "callbacks.0.per_print_times=5"])
    assert cfg.get("callbacks.1.prefix") == "mine"
    assert cfg.get("callbacks.0.per_print_times") == 5
    with pytest.raises(UserError, match="goes inside 'callbacks.7', which does not exist"):
        load_config(MF, ["callbacks.7.prefix=mine"])
    with pytest.raises(UserError, match="'7' is not an index of the 3-item list"):
        load_config(MF, ["callbacks.7=mine"])
