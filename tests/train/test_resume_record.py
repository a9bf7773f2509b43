"""train/resume.py on its own, without a run: the manifest → position rule and the compatibility
check's refusals (the end-to-end resume tests are tests/integration/test_resume.py)."""
import pytest

from petrun.config import load_config
from petrun.errors import UserError
from petrun.train.resume import Progress, check_compatible
from tests.conftest import ROOT

CONFIG = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"


def test_progress_mid_epoch_skips_the_batches_already_trained():
    m = {"step": 7, "epoch": 2, "step_in_epoch": 3, "batches_in_epoch": 6}
    assert Progress.from_manifest(m, steps_per_epoch=4) == Progress(7, 2, 6)


def test_progress_at_the_end_of_an_epoch_starts_the_next():
    m = {"step": 8, "epoch": 2, "step_in_epoch": 4, "batches_in_epoch": 8}
    assert Progress.from_manifest(m, steps_per_epoch=4) == Progress(8, 3, 0)


def _manifest(cfg, **over):
    import json
    m = {"world_size": 1, "epoch": 1, "config": json.loads(json.dumps(cfg.data, default=str)),
         "data": {"files": [], "order_sha256": "abc"}}
    m.update(over)
    return m


def test_compatible_checkpoint_passes_and_warns_about_soft_changes(tmp_path):
    cfg = load_config(CONFIG)
    warnings = []
    old = _manifest(load_config(CONFIG, ["optimizer.learning_rate=0.001"]))
    check_compatible(old, tmp_path, cfg=cfg, world_size=1, data_files=[],
                     order_digest=lambda epoch: "abc", warn=warnings.append)
    assert len(warnings) == 1 and "optimizer.learning_rate" in warnings[0]


@pytest.mark.parametrize("change, match", [
    ({"world_size": 2}, "2 data-parallel ranks"),
    ({"data": {"files": [{"bytes": 1, "sha256": "x"}], "order_sha256": "abc"}},
     "training data differs"),
    ({"data": {"files": [], "order_sha256": "other"}}, "different order"),
])
def test_incompatible_checkpoints_are_refused(tmp_path, change, match):
    cfg = load_config(CONFIG)
    with pytest.raises(UserError, match=match):
        check_compatible(_manifest(cfg, **change), tmp_path, cfg=cfg, world_size=1, data_files=[],
                         order_digest=lambda epoch: "abc", warn=lambda s: None)


def test_a_must_match_key_is_refused(tmp_path):
    old = _manifest(load_config(CONFIG, ["seed=5"]))
    with pytest.raises(UserError, match="seed is 0 but the checkpoint was trained with 5"):
        check_compatible(old, tmp_path, cfg=load_config(CONFIG), world_size=1, data_files=[],
                         order_digest=lambda epoch: "abc", warn=lambda s: None)
