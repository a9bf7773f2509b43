"""infer/chat.model_template, the one place that says which chat template a model speaks (predict,
chat and export call it): an explicit choice, else the template the adapter's run recorded in its
checkpoint manifest, else the family's default. The manifests here are written by hand in the
format ckpt/store.py reads; the end-to-end run is tests/integration/test_chat_template_recorded.py."""
import json

import pytest

from petrun.config import load_config
from petrun.errors import UserError
from petrun.infer.chat import model_template
from tests.conftest import ROOT

CONFIG = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"


def _run_folder(tmp_path, template):
    folder = tmp_path / "checkpoint" / "rank_0"
    folder.mkdir(parents=True)
    manifest = {"format": "petrun.checkpoint/1", "step": 2, "files": {}}
    if template:
        manifest["chat_template"] = template
    (folder / "run_rank_0-1_2.json").write_text(json.dumps(manifest))
    (folder / "run_rank_0-1_2.ckpt").write_bytes(b"")
    (folder / "latest").write_text("run_rank_0-1_2\n")
    return folder


def test_the_recorded_template_is_spoken_unless_a_choice_is_explicit(tmp_path):
    cfg = load_config(str(CONFIG))
    folder = _run_folder(tmp_path, "vicuna")
    assert model_template(cfg)[0] == "alpaca"                           # the family's default
    assert model_template(cfg, adapter=folder)[0] == "vicuna"           # the rank folder
    assert model_template(cfg, adapter=folder / "run_rank_0-1_2.ckpt")[0] == "vicuna"   # a file
    assert model_template(cfg, adapter=folder, flag="none")[0] == "none"
    configured = load_config(str(CONFIG), ["processor.tokenizer.chat_template=glm2"])
    assert model_template(configured, adapter=folder)[0] == "glm2"
    # a run's own config.yaml, beside its checkpoints, carries it too
    (folder / "config.yaml").write_text(cfg.to_yaml())     # as the run writes it, resolved
    assert model_template(load_config(str(folder / "config.yaml")))[0] == "vicuna"
    with pytest.raises(UserError, match="unknown chat template"):
        model_template(cfg, adapter=folder, flag="chatml")


def test_a_run_without_a_record_gets_the_family_default(tmp_path):
    """Data prepared beforehand (MindRecord) records no template."""
    cfg = load_config(str(CONFIG))
    assert model_template(cfg, adapter=_run_folder(tmp_path, None))[0] == "alpaca"
    assert model_template(cfg, adapter=tmp_path / "missing")[0] == "alpaca"
