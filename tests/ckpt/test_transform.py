"""petrun.ckpt.transform on hand-built strategy files: every result compared value by value with
numpy slices of the full tensors, and each of MindSpore's silent failure modes turned into an error.

Tensors: a column-parallel weight (split on dim 0), a row-parallel weight (dim 1), a column bias,
a vocab-parallel embedding, a replicated norm, and a global_step that no strategy lists.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from petrun.ckpt.transform import (auto_transform, find_rank_files, shard, transform,
                                   verify_output, SourceInfo)
from petrun.errors import UserError
from petrun.parallel.strategy import Layout
from tests.conftest import run_cli
from tests.parallel.strategy_helpers import hand_strategy, load, rank_file, save, write_shards

RNG = np.random.default_rng(7)
FULL = {
    "col.weight": RNG.standard_normal((16, 8)).astype(np.float32),
    "row.weight": RNG.standard_normal((8, 16)).astype(np.float32),
    "col.bias": RNG.standard_normal((16,)).astype(np.float32),
    "emb.weight": RNG.standard_normal((32, 8)).astype(np.float32),
    "norm.weight": RNG.standard_normal((8,)).astype(np.float32),
}
STEP = np.array([42], np.int32)


def tp_entries(n):
    """Tensor parallel over n devices: dev_matrix [n], the split axis is 0 (counted from the right)."""
    return {"col.weight": ([n], [0, -1]), "row.weight": ([n], [-1, 0]), "col.bias": ([n], [0]),
            "emb.weight": ([n], [0, -1]), "norm.weight": ([n], [-1])}


def tp_piece(name, n, r):
    """What rank r of TP-n holds, by plain numpy."""
    a = FULL[name]
    if name == "row.weight":
        return np.split(a, n, axis=1)[r]
    if name == "norm.weight":
        return a
    return np.split(a, n, axis=0)[r]


def tp_shards(root, n):
    return write_shards(root, {r: {**{k: tp_piece(k, n, r) for k in FULL}, "global_step": STEP}
                               for r in range(n)})


def assert_tp(dst, n):
    for r in range(n):
        got = load(rank_file(dst, r))
        assert set(got) == set(FULL) | {"global_step"}
        for k in FULL:
            np.testing.assert_array_equal(got[k], tp_piece(k, n, r), err_msg=f"rank {r} {k}")
        np.testing.assert_array_equal(got["global_step"], STEP)


def test_tp4_to_tp2(tmp_path):
    src = tp_shards(tmp_path / "tp4", 4)
    res = transform(src, tmp_path / "tp2", src_strategy=hand_strategy(tmp_path / "s4.ckpt", tp_entries(4)),
                    dst_strategy=hand_strategy(tmp_path / "s2.ckpt", tp_entries(2)))
    assert sorted(res.files) == [0, 1]
    assert res.files[1].name == "checkpoint_1.ckpt"
    assert_tp(tmp_path / "tp2", 2)


def test_tp4_to_one_full_file(tmp_path):
    src = tp_shards(tmp_path / "tp4", 4)
    res = transform(src, tmp_path / "full", src_strategy=hand_strategy(tmp_path / "s4.ckpt", tp_entries(4)))
    assert list(res.files) == [0]
    got = load(res.files[0])
    for k, v in FULL.items():
        np.testing.assert_array_equal(got[k], v)


def test_full_to_tp4_with_shard(tmp_path):
    full = save(tmp_path / "full.ckpt", {**FULL, "global_step": STEP})
    shard(full, hand_strategy(tmp_path / "s4.ckpt", tp_entries(4)), tmp_path / "tp4")
    assert_tp(tmp_path / "tp4", 4)


def test_dp_by_mp_to_full_and_to_tp4(tmp_path):
    """dev_matrix [dp=2, mp=2]: rank r = (r // 2, r % 2); tensor_map 0 is the mp axis, 1 the dp axis."""
    w2 = RNG.standard_normal((16, 8)).astype(np.float32)      # cut on both dims
    entries = {"col.weight": ([2, 2], [0, -1]), "row.weight": ([2, 2], [-1, 0]),
               "emb.weight": ([2, 2], [1, -1]), "w2.weight": ([2, 2], [1, 0])}
    pieces = {}
    for r in range(4):
        d, m = divmod(r, 2)
        pieces[r] = {"col.weight": np.split(FULL["col.weight"], 2, 0)[m],
                     "row.weight": np.split(FULL["row.weight"], 2, 1)[m],
                     "emb.weight": np.split(FULL["emb.weight"], 2, 0)[d],
                     "w2.weight": np.split(np.split(w2, 2, 0)[d], 2, 1)[m]}
    src = write_shards(tmp_path / "dpmp", pieces)
    s = hand_strategy(tmp_path / "dpmp.ckpt", entries)
    full = load(transform(src, tmp_path / "full", src_strategy=s).files[0])
    for k in ("col.weight", "row.weight", "emb.weight"):
        np.testing.assert_array_equal(full[k], FULL[k])
    np.testing.assert_array_equal(full["w2.weight"], w2)
    tp4 = {k: ([4], [0, -1]) for k in ("col.weight", "emb.weight", "w2.weight")}
    tp4["row.weight"] = ([4], [-1, 0])
    transform(src, tmp_path / "tp4", src_strategy=s, dst_strategy=hand_strategy(tmp_path / "t4.ckpt", tp4))
    for r in range(4):
        got = load(rank_file(tmp_path / "tp4", r))
        np.testing.assert_array_equal(got["col.weight"], np.split(FULL["col.weight"], 4, 0)[r])
        np.testing.assert_array_equal(got["row.weight"], np.split(FULL["row.weight"], 4, 1)[r])
        np.testing.assert_array_equal(got["w2.weight"], np.split(w2, 4, 0)[r])


def test_optimizer_shard_to_full(tmp_path):
    """ZeRO: inside each mp slice, dim 0 is cut again over the dp ranks (size 2, step mp = 2);
    a replicated tensor is cut over all 4 ranks (size 4, step 1)."""
    entries = {"col.weight": ([2, 2], [0, -1], 2, 2), "emb.weight": ([2, 2], [-1, -1], 4, 1)}
    pieces = {}
    for r in range(4):
        d, m = divmod(r, 2)
        pieces[r] = {"col.weight": FULL["col.weight"][m * 8 + d * 4: m * 8 + d * 4 + 4],
                     "emb.weight": FULL["emb.weight"][r * 8:(r + 1) * 8]}
    src = write_shards(tmp_path / "zero", pieces)
    full = load(transform(src, tmp_path / "full",
                          src_strategy=hand_strategy(tmp_path / "z.ckpt", entries)).files[0])
    np.testing.assert_array_equal(full["col.weight"], FULL["col.weight"])
    np.testing.assert_array_equal(full["emb.weight"], FULL["emb.weight"])
    # petrun's own Layout model of the same layout agrees with numpy
    lay = Layout((2, 2), (0, -1), 2, 2)
    for r in range(4):
        np.testing.assert_array_equal(FULL["col.weight"][lay.slices((16, 8), r)], pieces[r]["col.weight"])


def _pp_source(tmp_path):
    """2 pipeline stages × TP2: stage 0 = ranks 0-1 (embedding, layer 0), stage 1 = ranks 2-3."""
    l0 = RNG.standard_normal((16, 8)).astype(np.float32)
    l1 = RNG.standard_normal((16, 8)).astype(np.float32)
    st0 = {"emb.weight": ([2], [0, -1]), "layers.0.col.weight": ([2], [0, -1])}
    st1 = {"layers.1.col.weight": ([2], [0, -1]), "norm.weight": ([2], [-1])}
    sdir = tmp_path / "strategy"
    for r in range(4):   # one file per rank, as a job saves them
        hand_strategy(sdir / f"ckpt_strategy_rank_{r}.ckpt", st0 if r < 2 else st1, stage=r // 2)
    pieces = {}
    for r in range(4):
        m = r % 2
        if r < 2:
            pieces[r] = {"emb.weight": np.split(FULL["emb.weight"], 2)[m], "layers.0.col.weight": np.split(l0, 2)[m]}
        else:
            pieces[r] = {"layers.1.col.weight": np.split(l1, 2)[m], "norm.weight": FULL["norm.weight"]}
        pieces[r]["global_step"] = STEP
    src = write_shards(tmp_path / "pp", pieces)
    return src, sdir, {"emb.weight": FULL["emb.weight"], "layers.0.col.weight": l0,
                       "layers.1.col.weight": l1, "norm.weight": FULL["norm.weight"]}


def test_two_pipeline_stages_to_full(tmp_path):
    src, sdir, want = _pp_source(tmp_path)
    full = load(transform(src, tmp_path / "full", src_strategy=sdir).files[0])
    for k, v in want.items():
        np.testing.assert_array_equal(full[k], v, err_msg=k)
    assert "global_step" in full


def test_two_pipeline_stages_via_merged_file_to_tp4(tmp_path):
    import mindspore as ms
    src, sdir, want = _pp_source(tmp_path)
    merged = tmp_path / "merged" / "merged_ckpt_strategy.ckpt"
    ms.merge_pipeline_strategys(str(sdir), str(merged))
    t4 = hand_strategy(tmp_path / "t4.ckpt", {k: ([4], [0, -1] if want[k].ndim == 2 else [-1]) for k in want})
    transform(src, tmp_path / "tp4", src_strategy=merged, dst_strategy=t4)
    for r in range(4):
        got = load(rank_file(tmp_path / "tp4", r))
        for k, v in want.items():
            np.testing.assert_array_equal(got[k], np.split(v, 4)[r] if v.ndim == 2 else v, err_msg=k)


def test_one_stage_file_of_a_pipeline_run_is_refused(tmp_path):
    src, sdir, _ = _pp_source(tmp_path)
    with pytest.raises(UserError, match="stage-1 file of a pipeline"):
        transform(src, tmp_path / "out", src_strategy=sdir / "ckpt_strategy_rank_3.ckpt")
    with pytest.raises(UserError, match="describes 2 devices .* but the checkpoint has 4 rank folders"):
        transform(src, tmp_path / "out2", src_strategy=sdir / "ckpt_strategy_rank_0.ckpt")


# --------------------------------------------------------------------------- guards
def test_sharded_weight_missing_from_strategy(tmp_path):
    """MindSpore would write rank 0's [4, 8] shard as the whole col.weight (observed); petrun refuses."""
    src = tp_shards(tmp_path / "tp4", 4)
    entries = tp_entries(4)
    del entries["col.weight"]
    with pytest.raises(UserError, match="col.weight differs between rank folders"):
        transform(src, tmp_path / "full", src_strategy=hand_strategy(tmp_path / "s4.ckpt", entries))
    assert not (tmp_path / "full").exists() or not any((tmp_path / "full").iterdir())


def test_missing_entry_that_is_really_replicated_is_fine(tmp_path):
    src = tp_shards(tmp_path / "tp4", 4)
    entries = tp_entries(4)
    del entries["norm.weight"]          # identical on every rank: a whole tensor, safe to copy
    full = load(transform(src, tmp_path / "full", src_strategy=hand_strategy(tmp_path / "s.ckpt", entries)).files[0])
    np.testing.assert_array_equal(full["norm.weight"], FULL["norm.weight"])


def test_destination_strategy_missing_a_split_weight(tmp_path):
    src = tp_shards(tmp_path / "tp4", 4)
    dst = tp_entries(2)
    del dst["row.weight"]
    with pytest.raises(UserError, match="split in the source but absent from the destination"):
        transform(src, tmp_path / "o", src_strategy=hand_strategy(tmp_path / "s4.ckpt", tp_entries(4)),
                  dst_strategy=hand_strategy(tmp_path / "s2.ckpt", dst))


def test_stale_extra_file_in_a_rank_folder(tmp_path):
    src = tp_shards(tmp_path / "tp4", 4)
    stale = {k: np.zeros_like(tp_piece(k, 4, 1)) for k in FULL}
    save(src / "rank_1" / "zzz_stale.ckpt", stale)
    s4 = hand_strategy(tmp_path / "s4.ckpt", tp_entries(4))
    with pytest.raises(UserError, match="2 checkpoint files in one rank folder.*zzz_stale.ckpt"):
        transform(src, tmp_path / "full", src_strategy=s4)
    # Choosing explicitly works: the intended shard by name.
    full = load(transform(src, tmp_path / "full", src_strategy=s4, pick="shard*").files[0])
    np.testing.assert_array_equal(full["col.weight"], FULL["col.weight"])


def test_non_contiguous_rank_folders(tmp_path):
    src = tp_shards(tmp_path / "tp4", 4)
    os.rename(src / "rank_2", src / "rank_7")
    with pytest.raises(UserError, match="rank_2 is missing"):
        find_rank_files(src)


def test_rank_count_must_match_the_strategy(tmp_path):
    src = tp_shards(tmp_path / "tp2", 2)
    with pytest.raises(UserError, match="describes 4 devices.*2 rank folders"):
        transform(src, tmp_path / "o", src_strategy=hand_strategy(tmp_path / "s4.ckpt", tp_entries(4)))


def test_uneven_resharding_is_refused(tmp_path):
    src = tp_shards(tmp_path / "tp4", 4)
    s3 = {"col.weight": ([3], [-1, -1]), "norm.weight": ([3], [-1])}
    with pytest.raises(UserError, match="cannot reshard 4 devices per stage into 3"):
        transform(src, tmp_path / "o", src_strategy=hand_strategy(tmp_path / "s4.ckpt", tp_entries(4)),
                  dst_strategy=hand_strategy(tmp_path / "s3.ckpt", s3))


def test_split_that_does_not_divide(tmp_path):
    full = save(tmp_path / "full.ckpt", {"odd.weight": np.ones((6, 8), np.float32)})
    with pytest.raises(UserError, match="does not split these tensors evenly: odd.weight"):
        shard(full, hand_strategy(tmp_path / "s4.ckpt", {"odd.weight": ([4], [0, -1])}), tmp_path / "o")


def test_several_ranks_need_a_source_strategy_and_the_parent_folder(tmp_path):
    src = tp_shards(tmp_path / "tp4", 4)
    with pytest.raises(UserError, match="4 rank folders but no source strategy"):
        transform(src, tmp_path / "o")
    with pytest.raises(UserError, match="one rank's folder"):
        find_rank_files(src / "rank_0")


def test_destination_with_old_rank_folders_needs_overwrite(tmp_path):
    src = tp_shards(tmp_path / "tp4", 4)
    s4 = hand_strategy(tmp_path / "s4.ckpt", tp_entries(4))
    (tmp_path / "out" / "rank_5").mkdir(parents=True)
    with pytest.raises(UserError, match="already holds rank folders"):
        transform(src, tmp_path / "out", src_strategy=s4)
    transform(src, tmp_path / "out", src_strategy=s4, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rank_0"]


def test_output_check_catches_a_shard_written_as_whole(tmp_path):
    """The last line of defence: a rank-0 shard where the whole tensor belongs (what MindSpore
    writes for a missing entry) fails the shape check."""
    save(tmp_path / "out" / "rank_0" / "checkpoint_0.ckpt", {"col.weight": tp_piece("col.weight", 4, 0)})
    info = SourceInfo({"col.weight": (16, 8)}, {"col.weight": 0})
    with pytest.raises(UserError, match=r"col.weight is \(4, 8\), its layout needs \(16, 8\)"):
        verify_output(tmp_path / "out", info, None, "checkpoint_")


# --------------------------------------------------------------------------- auto_trans_ckpt
def test_auto_transform_rank0_merges_and_other_ranks_wait(tmp_path):
    src = tp_shards(tmp_path / "run" / "checkpoint", 4)
    hand_strategy(tmp_path / "run" / "strategy" / "ckpt_strategy_rank_0.ckpt", tp_entries(4))
    kw = dict(load_checkpoint=str(src), src_strategy=str(tmp_path / "run" / "strategy"), dst_strategy=None,
              output_dir=tmp_path / "output", world=2)
    files0 = auto_transform(rank=0, **kw)
    assert files0 == [tmp_path / "output" / "transformed_checkpoint" / "checkpoint" / "rank_0" / "checkpoint_0.ckpt"]
    np.testing.assert_array_equal(load(files0[0])["row.weight"], FULL["row.weight"])
    assert auto_transform(rank=1, timeout_s=5, **kw) == files0        # data parallel: every rank loads rank_0's file


def test_auto_transform_waiting_rank_ignores_a_previous_runs_marker(tmp_path):
    marker = tmp_path / "output" / "transformed_checkpoint" / "transform_status.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"ok": True, "time": 1.0}))     # written long before this process
    save(tmp_path / "base.ckpt", FULL)
    with pytest.raises(UserError, match="waited 0 s for rank 0"):
        auto_transform(load_checkpoint=str(tmp_path / "base.ckpt"), src_strategy=None, dst_strategy=None,
                       output_dir=tmp_path / "output", rank=1, world=2, timeout_s=0.3, poll_s=0.05)
    marker.write_text(json.dumps({"ok": False, "error": "boom", "time": time.time()}))
    with pytest.raises(UserError, match="rank 0 failed to transform the checkpoint: boom"):
        auto_transform(load_checkpoint=str(tmp_path / "base.ckpt"), src_strategy=None, dst_strategy=None,
                       output_dir=tmp_path / "output", rank=1, world=2, timeout_s=5, poll_s=0.05)


def test_auto_transform_keeps_base_and_adapter_units_apart(tmp_path):
    save(tmp_path / "src" / "base.ckpt", {"col.weight": FULL["col.weight"]})
    save(tmp_path / "src" / "lora.ckpt", {"col.lora_a": FULL["norm.weight"][None, :]})
    s2 = hand_strategy(tmp_path / "s2.ckpt", {"col.weight": ([2], [0, -1]), "col.lora_a": ([2], [-1, -1])})
    kw = dict(load_checkpoint=str(tmp_path / "src"), src_strategy=None, dst_strategy=str(s2),
              output_dir=tmp_path / "output", world=2)
    auto_transform(rank=0, **kw)
    files = auto_transform(rank=1, timeout_s=5, **kw)
    assert [f.parent.parent.name for f in files] == ["base", "lora"]
    np.testing.assert_array_equal(load(files[0])["col.weight"], np.split(FULL["col.weight"], 2)[1])


def test_auto_transform_refuses_a_source_inside_its_output(tmp_path):
    src = tmp_path / "output" / "transformed_checkpoint" / "x"
    save(src / "a.ckpt", FULL)
    with pytest.raises(UserError, match="inside output_dir/transformed_checkpoint"):
        auto_transform(load_checkpoint=str(src), src_strategy=None, dst_strategy=None,
                       output_dir=tmp_path / "output", rank=0, world=1)


# --------------------------------------------------------------------------- CLI
def test_cli_transform_and_its_errors(tmp_path):
    src = tp_shards(tmp_path / "tp4", 4)
    s4 = hand_strategy(tmp_path / "s4.ckpt", tp_entries(4))
    s2 = hand_strategy(tmp_path / "s2.ckpt", tp_entries(2))
    r = run_cli("ckpt", "transform", "--src", src, "--src-strategy", s4, "--dst-strategy", s2,
                "--dst", tmp_path / "tp2")
    assert r.returncode == 0, r.stderr
    assert "2 rank folder(s)" in r.stdout
    assert_tp(tmp_path / "tp2", 2)
    save(src / "rank_3" / "old.ckpt", {k: tp_piece(k, 4, 3) for k in FULL})
    r = run_cli("ckpt", "transform", "--src", src, "--src-strategy", s4, "--dst", tmp_path / "full")
    assert r.returncode == 2
    assert "2 checkpoint files in one rank folder" in r.stderr and "--pick" in r.stderr
    assert "Traceback" not in r.stderr


def test_auto_trans_files_follows_the_parallel_mode(tmp_path):
    """Data parallel: a complete file loads as is, rank_N/ shards are merged once. Semi-auto:
    petrun writes the job's strategy (no compile) and reshards the complete file to it."""
    from petrun.build import auto_trans_files
    from petrun.config import load_config
    from tests.conftest import ROOT
    tiny = str(ROOT / "configs/llama2/lora_llama2_tiny.yaml")
    base = ROOT / "data/demo/llama2_tiny_base.ckpt"
    out = tmp_path / "output"
    dp = load_config(tiny, ["use_parallel=True", "auto_trans_ckpt=True", f"load_checkpoint={base}"])
    assert auto_trans_files(dp, rank=0, world=2, output_dir=out) is None
    assert auto_trans_files(load_config(tiny, [f"load_checkpoint={base}"]), rank=0, world=1, output_dir=out) is None
    semi = load_config(tiny, ["use_parallel=True", "auto_trans_ckpt=True", f"load_checkpoint={base}",
                              "parallel.parallel_mode=1", "parallel_config.data_parallel=1",
                              "parallel_config.model_parallel=2"])
    f0 = auto_trans_files(semi, rank=0, world=2, output_dir=out)
    f1 = auto_trans_files(semi, rank=1, world=2, output_dir=out, timeout_s=5)
    assert sorted(p.name for p in (out / "strategy").iterdir()) == ["ckpt_strategy_rank_0.ckpt",
                                                                    "ckpt_strategy_rank_1.ckpt"]
    full = load(base)
    w1 = "model.layers.1.feed_forward.w1.weight"
    np.testing.assert_array_equal(load(f1[0])[w1], np.split(full[w1], 2)[1])
    np.testing.assert_array_equal(load(f0[0])[w1], np.split(full[w1], 2)[0])
    # the merged data-parallel path: shards from the semi-auto run → one file for every rank
    dp_sharded = load_config(tiny, ["use_parallel=True", "auto_trans_ckpt=True",
                                    f"load_checkpoint={out / 'transformed_checkpoint' / base.stem}",
                                    f"src_strategy_path_or_dir={out / 'strategy'}"])
    merged = auto_trans_files(dp_sharded, rank=0, world=2, output_dir=tmp_path / "dp_out")
    np.testing.assert_array_equal(load(merged[0])[w1], full[w1])


def test_cli_transform_of_a_source_that_is_already_complete(tmp_path):
    """One rank and no strategy (a single-card finetune's checkpoint/), or one .ckpt and no
    --dst-strategy: nothing to merge; MindSpore's own error named neither."""
    src = write_shards(tmp_path / "run" / "checkpoint", {0: FULL})
    r = run_cli("ckpt", "transform", "--src", src, "--dst", tmp_path / "t")
    assert r.returncode == 2, r.stdout + r.stderr
    only = src / "rank_0" / "shard.ckpt"
    assert f"key '--src': the source has one rank and no --src-strategy: it is already one complete " \
           f"checkpoint, {only}" in r.stderr
    assert f"Fix: use {only} directly" in r.stderr and "--dst-strategy" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "t").exists()
    r = run_cli("ckpt", "transform", "--src", only, "--dst", tmp_path / "t")
    assert r.returncode == 2 and "already one complete checkpoint and no --dst-strategy" in r.stderr
    assert f"Fix: use {only} as it is" in r.stderr and not (tmp_path / "t").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]      # no work folder left behind


def test_cli_transform_refuses_a_file_that_is_no_strategy(tmp_path):
    from tests.conftest import ROOT
    src = tp_shards(tmp_path / "tp2", 2)
    (tmp_path / "s.json").write_text('{"vocab": [1, 2]}')
    for bad in (ROOT / "data" / "demo" / "tokenizer.model", tmp_path / "s.json"):
        r = run_cli("ckpt", "transform", "--src", src, "--src-strategy", bad, "--dst", tmp_path / "o")
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"{bad}: key '--src-strategy': not a MindSpore" in r.stderr and "strategy file" in r.stderr
        assert "Fix: pass the folder (or one ckpt_strategy_rank_N.ckpt file) that `petrun ckpt " \
               "strategy --out` wrote, or MindFormers' output/strategy/ folder" in r.stderr
        assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()
