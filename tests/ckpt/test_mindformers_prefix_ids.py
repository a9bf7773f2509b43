"""MindFormers' P-Tuning v2 / prefix-tuning checkpoints also hold the prefix token ids (a constant
arange(pre_seq_len) Parameter: tests/oracle found it in MindFormers 1.3.2's models). A
whole-network checkpoint with it must load into petrun's model and pass pre-flight; a real
unknown entry must still be refused."""
import numpy as np
import pytest

import mindspore as ms

import petrun
from petrun.errors import UserError
from tests.conftest import ROOT, run_cli

CONFIG = ROOT / "configs" / "glm2" / "ptuning2_glm2_tiny.yaml"


def _save(model, path, extra: dict):
    params = [{"name": p.name, "data": p.value()} for p in model.get_parameters()]
    params += [{"name": n, "data": ms.Tensor(v)} for n, v in extra.items()]
    ms.save_checkpoint(params, str(path))


@pytest.mark.parametrize("name", ["prefix_encoder.mindpet_delta_ptuning2_prefix",
                                  "mindpet_delta_ptuning2_prefix"])
def test_whole_network_checkpoint_with_prefix_ids_loads(tmp_path, name):
    cfg = petrun.load_config(CONFIG)
    model = petrun.build_model(cfg)
    pre_seq_len = cfg.get("model.model_config.pet_config.pre_seq_len")
    path = tmp_path / "mf_glm2_ptuning2.ckpt"
    _save(model, path, {name: np.arange(pre_seq_len, dtype=np.int32)})
    fresh = petrun.build_model(cfg)
    result = petrun.load_checkpoint(fresh, path)
    assert name in result["ignored"]
    assert {p.name for p in fresh.get_parameters()} <= set(result["loaded"])
    r = run_cli("config", "validate", "--config", CONFIG, f"load_checkpoint={path}")
    assert r.returncode == 0, r.stdout + r.stderr


def test_an_unknown_entry_is_still_refused(tmp_path):
    cfg = petrun.load_config(CONFIG)
    model = petrun.build_model(cfg)
    path = tmp_path / "other.ckpt"
    _save(model, path, {"prefix_encoder.mindpet_delta_ptuning2_prefixes": np.arange(4, dtype=np.int32)})
    with pytest.raises(UserError, match="match no model parameter"):
        petrun.load_checkpoint(petrun.build_model(cfg), path)
