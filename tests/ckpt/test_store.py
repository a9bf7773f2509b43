"""Checkpoint folders on a real file system: manifests, checksums, `latest`, fallback, pruning,
resume-path resolution, and a failed write that must leave the previous file untouched."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, Tensor

from petrun.atomic import sha256_file
from petrun.ckpt.load import checkpoint_files, read_checkpoint
from petrun.ckpt.store import (LATEST, STATE_DIR, CheckpointFolder, checkpoint_stem,
                               find_resume_checkpoint)
from petrun.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def _params(step: int):
    adapter = [Parameter(Tensor(np.full((4, 3), step, np.float32)), name="l.mindpet_delta_lora_a")]
    state = [Parameter(Tensor(np.full((4, 3), -step, np.float32)), name="adam_m.l.mindpet_delta_lora_a"),
             Parameter(Tensor(np.array([step], np.int32)), name="global_step")]
    return adapter, state


def _save(folder: CheckpointFolder, step: int, run_id="run-a", rank=0):
    adapter, state = _params(step)
    stem = checkpoint_stem("tiny", rank, 1, step)
    return folder.save(stem, adapter=adapter, state=state, append={"epoch_num": 1, "step_num": step},
                       manifest={"step": step, "epoch": 1, "run_id": run_id})


def _truncate(path: Path, keep: int | None = None):
    data = path.read_bytes()
    os.chmod(path, 0o600)   # MindSpore leaves checkpoints read-only
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def _flip_byte(path: Path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(path, 0o600)
    path.write_bytes(bytes(data))


@pytest.fixture
def folder(tmp_path):
    return CheckpointFolder(tmp_path / "checkpoint" / "rank_0")


def test_save_writes_adapter_state_manifest_then_latest(folder):
    ckpt = _save(folder, 2)
    assert ckpt.adapter.name == "tiny_rank_0-1_2.ckpt"
    assert ckpt.state == folder.path / STATE_DIR / "tiny_rank_0-1_2.ckpt"
    assert (folder.path / LATEST).read_text() == "tiny_rank_0-1_2\n"
    manifest = json.loads(ckpt.manifest_path.read_text())
    assert manifest["format"] == "petrun.checkpoint/1" and manifest["step"] == 2
    assert manifest["files"]["adapter"] == {"path": "tiny_rank_0-1_2.ckpt",
                                            "bytes": ckpt.adapter.stat().st_size,
                                            "sha256": sha256_file(ckpt.adapter)}
    # The adapter file stays a plain MindFormers adapter; optimizer state lives beside it.
    assert set(ms.load_checkpoint(str(ckpt.adapter))) == {"l.mindpet_delta_lora_a", "epoch_num", "step_num"}
    assert {"adam_m.l.mindpet_delta_lora_a", "global_step"} <= set(ms.load_checkpoint(str(ckpt.state)))
    assert [f.name for f in folder.path.glob("*.ckpt")] == ["tiny_rank_0-1_2.ckpt"]
    assert not [f for f in folder.path.rglob("*") if ".partial-" in f.name]
    assert ckpt.problem() is None


@pytest.mark.parametrize("damage", [_truncate, _flip_byte], ids=["truncated", "bit-flipped"])
@pytest.mark.parametrize("role", ["adapter", "state"])
def test_damaged_newest_checkpoint_falls_back_with_a_warning(folder, damage, role):
    _save(folder, 2)
    newest = _save(folder, 4)
    damage(getattr(newest, role))
    warnings = []
    found = folder.newest_intact(warnings.append)
    assert found.step == 2
    assert len(warnings) == 1 and "tiny_rank_0-1_4" in warnings[0] and str(getattr(newest, role)) in warnings[0]
    # Loading the damaged file directly is refused, naming it.
    with pytest.raises(UserError, match="damaged") as e:
        read_checkpoint(getattr(newest, role))
    assert str(getattr(newest, role)) in str(e.value)


def test_a_checkpoint_with_inf_weights_is_passed_over(folder):
    """A checkpoint written before petrun refused to save inf/NaN weights (no "finite" mark in
    its manifest, files intact): resume and --adapter folders skip it, saying why."""
    _save(folder, 2)
    adapter, state = _params(4)
    bad = adapter[0].asnumpy()
    bad[0, 0], bad[1, 2] = np.inf, np.nan
    adapter[0].set_data(Tensor(bad))
    folder.save(checkpoint_stem("tiny", 0, 1, 4), adapter=adapter, state=state,
                append={"epoch_num": 1, "step_num": 4}, manifest={"step": 4, "epoch": 1, "run_id": "a"})
    warnings = []
    assert folder.newest_intact(warnings.append).step == 2
    assert len(warnings) == 1 and "tiny_rank_0-1_4" in warnings[0] and "2 inf/NaN values" in warnings[0]


def test_latest_naming_a_missing_manifest_falls_back(folder):
    _save(folder, 2)
    newest = _save(folder, 4)
    newest.manifest_path.unlink()
    warnings = []
    assert folder.newest_intact(warnings.append).step == 2
    assert "tiny_rank_0-1_4" in warnings[0]


def test_a_save_killed_midway_leaves_the_previous_checkpoint_current(folder):
    # What a kill -9 between the adapter and the manifest leaves: a complete adapter without a
    # manifest, and a temporary file of the state write.
    _save(folder, 2)
    adapter, _ = _params(4)
    ms.save_checkpoint(adapter, str(folder.path / "tiny_rank_0-1_4.ckpt"))
    leftover = folder.path / STATE_DIR / ".tiny_rank_0-1_4.partial-99999.ckpt"
    leftover.write_bytes(b"half a checkpoint")
    assert folder.newest_intact().step == 2
    assert folder.remove_leftovers() == [leftover.name]
    assert not leftover.exists()
    assert [c.step for c in folder.checkpoints()] == [2]


def test_prune_keeps_the_newest_n_of_this_run_and_never_touches_another_run(folder):
    _save(folder, 1, run_id="old")
    for step in (2, 4, 6, 8):
        _save(folder, step, run_id="new")
    removed = folder.prune(2, "new")
    assert removed == ["tiny_rank_0-1_4", "tiny_rank_0-1_2"]
    assert [c.step for c in folder.checkpoints()] == [8, 6, 1]
    assert sorted(f.name for f in (folder.path / STATE_DIR).iterdir()) == [
        "tiny_rank_0-1_1.ckpt", "tiny_rank_0-1_6.ckpt", "tiny_rank_0-1_8.ckpt"]
    assert not (folder.path / "tiny_rank_0-1_2.ckpt").exists()


def test_loading_a_checkpoint_folder_takes_its_newest_intact_adapter(folder):
    _save(folder, 2)
    newest = _save(folder, 4)
    assert checkpoint_files(folder.path) == [newest.adapter]
    _truncate(newest.adapter)
    assert checkpoint_files(folder.path) == [folder.path / "tiny_rank_0-1_2.ckpt"]
    assert float(read_checkpoint(folder.path)["l.mindpet_delta_lora_a"].asnumpy()[0, 0]) == 2.0


def test_resume_paths_resolve_to_the_same_checkpoint(tmp_path, folder):
    _save(folder, 2)
    want = _save(folder, 4)
    out = tmp_path
    for value in (True, str(out), str(out / "checkpoint"), str(folder.path), str(want.adapter),
                  str(want.state), str(want.manifest_path), "tiny_rank_0-1_4.ckpt"):
        got = find_resume_checkpoint(value, output_dir=out, rank=0)
        assert (got.stem, got.step) == (want.stem, 4), value


def test_a_rank_0_file_named_on_every_rank_means_each_ranks_own(tmp_path):
    for rank in (0, 1):
        _save(CheckpointFolder(tmp_path / "checkpoint" / f"rank_{rank}"), 3, rank=rank)
    rank0_file = tmp_path / "checkpoint" / "rank_0" / "tiny_rank_0-1_3.ckpt"
    got = find_resume_checkpoint(str(rank0_file), output_dir=tmp_path, rank=1)
    assert got.adapter == tmp_path / "checkpoint" / "rank_1" / "tiny_rank_1-1_3.ckpt"


def test_resume_true_on_an_empty_folder_means_start_fresh(tmp_path):
    assert find_resume_checkpoint(True, output_dir=tmp_path, rank=0) is None


def test_resume_errors_name_the_path_and_a_fix(tmp_path, folder):
    with pytest.raises(UserError, match="does not exist") as e:
        find_resume_checkpoint(str(tmp_path / "nope"), output_dir=tmp_path, rank=0)
    assert "Fix:" in str(e.value)
    plain = tmp_path / "base.ckpt"
    ms.save_checkpoint(_params(1)[0], str(plain))
    with pytest.raises(UserError, match="not a checkpoint written by petrun"):
        find_resume_checkpoint(str(plain), output_dir=tmp_path, rank=0)
    only = _save(folder, 2)
    _flip_byte(only.adapter)
    with pytest.raises(UserError, match="no intact checkpoint in this folder") as e:
        find_resume_checkpoint(True, output_dir=tmp_path, rank=0)
    assert f"skipping damaged checkpoint {only.stem}" in str(e.value)
    with pytest.raises(UserError, match="damaged") as e:   # named explicitly: no fallback
        find_resume_checkpoint(str(only.adapter), output_dir=tmp_path, rank=0)
    assert "SHA-256" in str(e.value)


def test_a_failed_overwrite_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    """RLIMIT_FSIZE makes the write fail for real (EFBIG); MindSpore alone would have deleted
    the old file before writing (reference/feasibility.md §6)."""
    target = tmp_path / "adapter.ckpt"
    ms.save_checkpoint([Parameter(Tensor(np.ones(8, np.float32)), name="w")], str(target))
    before = target.read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal, sys
        import numpy as np
        from mindspore import Parameter, Tensor
        from petrun.ckpt.io import save_params
        from petrun.errors import UserError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            save_params([Parameter(Tensor(np.ones(100000, np.float32)), name="w")], {str(target)!r})
        except UserError as e:
            print(e)
            sys.exit(2)
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "GLOG_v": "3"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert str(target) in r.stdout and "File too large" in r.stdout and "ulimit" in r.stdout
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.ckpt"]
