"""`petrun ckpt strategy` writes the strategy files a config implies without compiling; they must
equal hand-built layouts, be accepted by MindSpore's transform API, and `petrun ckpt shard` must
cut a real checkpoint into exactly the numpy pieces they describe."""
from __future__ import annotations

import dataclasses
import re

import mindspore as ms
import numpy as np
import pytest

from tests.conftest import ROOT, run_cli
from tests.parallel.strategy_helpers import load, rank_file, save

TINY = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"
BASE = ROOT / "data" / "demo" / "llama2_tiny_base.ckpt"
SEMI = ["parallel.parallel_mode=1"]

COLUMN = re.compile(r".*\.(wq|wk|wv|w1|w3)\.weight$")
ROW = re.compile(r".*\.(wo|w2)\.weight$")
TARGET = re.compile(r".*\.(wq|wk|wv|wo)\.mindpet_delta_lora_[ab]$")   # the tiny config's LoRA targets


def hand_layout(name: str, dp: int, mp: int):
    """The layout the issue asks for, written out by hand: (dev_matrix, tensor_map)."""
    dev = [dp, mp]
    if COLUMN.match(name):
        return dev, [0, -1]
    if ROW.match(name):
        return dev, [-1, 0]
    if TARGET.match(name):
        base_is_row = ".wo." in name
        if name.endswith("lora_a"):
            return dev, [-1, 0] if base_is_row else [-1, -1]
        return dev, [-1, -1] if base_is_row else [0, -1]
    return dev, [-1] * (1 if name.endswith("norm.weight") or "norm_out" in name else 2)


def piece(name, full, dp, mp, r):
    """Rank r's piece of `full` under hand_layout, by numpy (rank = d * mp + m)."""
    m = r % mp
    tmap = hand_layout(name, dp, mp)[1]
    for axis, t in enumerate(tmap):
        if t == 0:
            full = np.split(full, mp, axis=axis)[m]
    return full


def read(path):
    """MindSpore's own reader of strategy files."""
    out = {}
    for name, lay in ms.build_searched_strategy(str(path)).items():
        out[name] = (list(lay.dev_matrix[0].dim), list(lay.tensor_map[0].dim),
                     lay.opt_weight_shard_size, lay.opt_weight_shard_step)
    return out


def strategy(tmp_path, *overrides, fmt="ckpt"):
    out = tmp_path / "strategy"
    r = run_cli("ckpt", "strategy", "--config", TINY, "--out", out, "--format", fmt, *SEMI, *overrides)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r.stdout


def test_strategy_files_equal_the_hand_built_layouts(tmp_path):
    out, text = strategy(tmp_path, "parallel_config.data_parallel=2", "parallel_config.model_parallel=2")
    files = sorted(out.glob("*.ckpt"))
    assert [f.name for f in files] == [f"ckpt_strategy_rank_{r}.ckpt" for r in range(4)]
    assert "dp 2 × mp 2 × pp 1 = 4 devices" in text
    got = read(files[0])
    assert len(got) == 2 + 2 * 9 + 2 * 8 + 1     # embedding, head, 2 layers × 9, 16 LoRA, final norm
    for name, (dev, tmap, size, step) in got.items():
        assert (dev, tmap) == tuple(hand_layout(name, 2, 2)), name
        assert (size, step) == (0, 0)
    assert all(read(f) == got for f in files[1:])   # one stage: every rank's file is the whole net


def test_shard_a_real_checkpoint_and_merge_it_back(tmp_path):
    out, _ = strategy(tmp_path, "parallel_config.data_parallel=2", "parallel_config.model_parallel=2")
    full = load(BASE)
    r = run_cli("ckpt", "shard", "--src", BASE, "--strategy", out, "--dst", tmp_path / "shards")
    assert r.returncode == 0, r.stdout + r.stderr
    for rank in range(4):
        got = load(rank_file(tmp_path / "shards", rank))
        assert set(got) == set(full)
        for name, value in full.items():
            np.testing.assert_array_equal(got[name], piece(name, value, 2, 2, rank), err_msg=f"{rank} {name}")
    # MindSpore's API reads petrun's file directly: shards → one complete checkpoint again
    ms.transform_checkpoints(str(tmp_path / "shards"), str(tmp_path / "back"), "full_",
                             str(out / "ckpt_strategy_rank_0.ckpt"), None)
    back = load(rank_file(tmp_path / "back", 0))
    for name, value in full.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_two_pipeline_stages(tmp_path):
    out, _ = strategy(tmp_path, "parallel_config.data_parallel=1", "parallel_config.model_parallel=2",
                      "parallel_config.pipeline_stage=2")
    stage0, stage1 = read(out / "ckpt_strategy_rank_0.ckpt"), read(out / "ckpt_strategy_rank_2.ckpt")
    assert "model.tok_embeddings.embedding_weight" in stage0 and "model.layers.0.attention.wq.weight" in stage0
    assert "lm_head.weight" in stage1 and "model.layers.1.attention.wq.weight" in stage1
    assert not set(stage0) & set(stage1)
    assert read(out / "ckpt_strategy_rank_1.ckpt") == stage0
    # MindSpore's merge recognises the stages petrun wrote
    ms.merge_pipeline_strategys(str(out), str(tmp_path / "merged" / "merged.ckpt"))
    merged = read(tmp_path / "merged" / "merged.ckpt")
    assert "1-lm_head.weight" in merged and "0-model.tok_embeddings.embedding_weight" in merged
    full = load(BASE)
    r = run_cli("ckpt", "shard", "--src", BASE, "--strategy", out, "--dst", tmp_path / "pp")
    assert r.returncode == 0, r.stdout + r.stderr
    for rank in range(4):
        got = load(rank_file(tmp_path / "pp", rank))
        names = stage0 if rank < 2 else stage1
        loose = set(full) - set(stage0) - set(stage1)            # epoch_num, step_num: on every rank
        assert set(got) == (set(names) & set(full)) | loose and loose == {"epoch_num", "step_num"}
        for name in set(got) - loose:
            np.testing.assert_array_equal(got[name], piece(name, full[name], 1, 2, rank), err_msg=f"{rank} {name}")
    r = run_cli("ckpt", "transform", "--src", tmp_path / "pp", "--src-strategy", out, "--dst", tmp_path / "back")
    assert r.returncode == 0, r.stdout + r.stderr
    back = load(rank_file(tmp_path / "back", 0))
    for name, value in full.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_optimizer_shard_layouts_round_trip_an_adapter(tmp_path):
    """LoRA adapters are what the optimizer updates: with optimizer sharding they are cut again
    over the data-parallel ranks; MindSpore must split and merge them by petrun's files."""
    out, _ = strategy(tmp_path, "parallel_config.data_parallel=2", "parallel_config.model_parallel=2",
                      "parallel.enable_parallel_optimizer=True",
                      "parallel.parallel_optimizer_config.parallel_optimizer_threshold=0")
    lay = read(out / "ckpt_strategy_rank_0.ckpt")
    b = lay["model.layers.0.attention.wq.mindpet_delta_lora_b"]
    a = lay["model.layers.0.attention.wq.mindpet_delta_lora_a"]
    assert (b[2], b[3]) == (2, 2) and (a[2], a[3]) == (4, 1)
    assert lay["model.layers.0.attention.wq.weight"][2] == 0          # frozen: not in the optimizer
    rng = np.random.default_rng(0)
    adapter = {n: rng.standard_normal(s).astype(np.float32) for n, s in (
        ("model.layers.0.attention.wq.mindpet_delta_lora_a", (8, 64)),
        ("model.layers.0.attention.wq.mindpet_delta_lora_b", (64, 8)))}
    save(tmp_path / "adapter.ckpt", adapter)
    r = run_cli("ckpt", "shard", "--src", tmp_path / "adapter.ckpt", "--strategy", out, "--dst", tmp_path / "z")
    assert r.returncode == 0, r.stdout + r.stderr
    for rank in range(4):
        d, m = divmod(rank, 2)
        got = load(rank_file(tmp_path / "z", rank))
        bfull = adapter["model.layers.0.attention.wq.mindpet_delta_lora_b"]
        np.testing.assert_array_equal(got["model.layers.0.attention.wq.mindpet_delta_lora_b"],
                                      np.split(np.split(bfull, 2)[m], 2)[d])
        np.testing.assert_array_equal(got["model.layers.0.attention.wq.mindpet_delta_lora_a"],
                                      np.split(adapter["model.layers.0.attention.wq.mindpet_delta_lora_a"], 4)[rank])
    r = run_cli("ckpt", "transform", "--src", tmp_path / "z", "--src-strategy", out, "--dst", tmp_path / "back")
    assert r.returncode == 0, r.stdout + r.stderr
    back = load(rank_file(tmp_path / "back", 0))
    for n, v in adapter.items():
        np.testing.assert_array_equal(back[n], v)


def test_json_strategy_files_are_read_by_mindspore(tmp_path):
    out, _ = strategy(tmp_path, "parallel_config.data_parallel=1", "parallel_config.model_parallel=2", fmt="json")
    got = read(out / "ckpt_strategy_rank_1.json")
    assert got["model.layers.0.feed_forward.w2.weight"][:2] == ([1, 2], [-1, 0])


def test_strategy_refusals(tmp_path):
    r = run_cli("ckpt", "strategy", "--config", TINY, "--out", tmp_path / "s")
    assert r.returncode == 2 and "data parallel) has no strategy files" in r.stderr
    r = run_cli("ckpt", "strategy", "--config", TINY, "--out", tmp_path / "s", *SEMI,
                "parallel_config.model_parallel=3")
    assert r.returncode == 2 and "model_parallel 3 does not divide" in r.stderr
    assert "Traceback" not in r.stderr


def hidden_leftovers(folder):
    return [p.name for p in folder.rglob(".*")]


def test_strategy_out_must_be_a_folder(tmp_path):
    target = tmp_path / "base.ckpt"
    target.write_bytes(BASE.read_bytes())
    r = run_cli("ckpt", "strategy", "--config", TINY, "--out", target, *SEMI, "parallel_config.model_parallel=2")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "key '--out': --out must be a folder, and this path is a file" in r.stderr
    assert "Fix: name a new or empty folder" in r.stderr and "Traceback" not in r.stderr
    assert target.read_bytes() == BASE.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == ["base.ckpt"]


def test_strategy_into_a_used_folder_needs_overwrite_and_replaces_the_whole_set(tmp_path):
    out, _ = strategy(tmp_path, "parallel_config.data_parallel=2", "parallel_config.model_parallel=2")
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    assert len(before) == 4
    r = run_cli("ckpt", "strategy", "--config", TINY, "--out", out, *SEMI, "parallel_config.model_parallel=2")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "key '--out': the folder already holds 4 strategy file(s)" in r.stderr
    assert "Fix: choose a new or empty folder, or pass --overwrite to replace them" in r.stderr
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    r = run_cli("ckpt", "strategy", "--config", TINY, "--out", out, *SEMI, "parallel_config.model_parallel=2",
                "--overwrite")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(f.name for f in out.iterdir()) == ["ckpt_strategy_rank_0.ckpt", "ckpt_strategy_rank_1.ckpt"]
    assert read(out / "ckpt_strategy_rank_1.ckpt")["model.layers.0.attention.wq.weight"][:2] == ([1, 2], [0, -1])
    # the folder now reads as one run (stale rank_2/3 used to make this "mix runs")
    r = run_cli("ckpt", "shard", "--src", BASE, "--strategy", out, "--dst", tmp_path / "mp2")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("ckpt", "transform", "--src", tmp_path / "mp2", "--src-strategy", out, "--dst", tmp_path / "back")
    assert r.returncode == 0, r.stdout + r.stderr
    # other .ckpt files would be read as strategies: refused even with --overwrite, nothing deleted
    (out / "notes.json").write_text("{}")
    r = run_cli("ckpt", "strategy", "--config", TINY, "--out", out, *SEMI, "--overwrite")
    assert r.returncode == 2 and "other .ckpt/.json files (notes.json)" in r.stderr
    assert "Fix: choose a new or empty folder for --out" in r.stderr
    assert len(list(out.iterdir())) == 3 and not hidden_leftovers(out)


def test_a_failed_rewrite_keeps_the_old_strategy_set(tmp_path):
    from petrun.config import load_config
    from petrun.build import plan_for_config
    from petrun.parallel.strategy_file import write_plan
    out, _ = strategy(tmp_path, "parallel_config.data_parallel=2", "parallel_config.model_parallel=2")
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    plan = plan_for_config(load_config(str(TINY), SEMI + ["parallel_config.model_parallel=2"]))
    name = "model.norm_out.weight"
    assert name in plan.layouts
    # a layout that cannot be encoded: writing the new set fails part-way
    plan.layouts[name] = dataclasses.replace(plan.layouts[name], dev_matrix=("x",))
    with pytest.raises(ValueError):
        write_plan(plan, out, overwrite=True)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before and not hidden_leftovers(out)


def test_shard_refuses_a_strategy_made_for_another_model(tmp_path):
    deeper, _ = strategy(tmp_path / "l3", "parallel_config.model_parallel=2", "model.model_config.num_layers=3")
    r = run_cli("ckpt", "shard", "--src", BASE, "--strategy", deeper, "--dst", tmp_path / "out")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "key '--strategy': the strategy was made for another model: the strategy lays out 9 " \
           "parameter(s) the checkpoint lacks, e.g. model.layers.2." in r.stderr
    assert "Fix: regenerate it with `petrun ckpt strategy --config <the checkpoint's config>" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()
    shallower, _ = strategy(tmp_path / "l1", "parallel_config.model_parallel=2", "model.model_config.num_layers=1")
    r = run_cli("ckpt", "shard", "--src", BASE, "--strategy", shallower, "--dst", tmp_path / "out")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "the checkpoint holds 9 tensor(s) the strategy does not lay out, e.g. model.layers.1." in r.stderr
    assert "Fix: regenerate it" in r.stderr and not (tmp_path / "out").exists()
    assert not hidden_leftovers(tmp_path)


def test_shard_name_check_lets_legitimate_partial_files_through(tmp_path):
    """Optimizer moments absent from the strategy, and a strategy that lays out only the adapter
    (only_trainable_params) for a checkpoint with base weights too, still shard."""
    from petrun.ckpt.transform import shard
    from tests.parallel.strategy_helpers import hand_strategy
    out, _ = strategy(tmp_path, "parallel_config.model_parallel=2")
    full = load(BASE)
    lay = read(out / "ckpt_strategy_rank_0.ckpt")
    wq_a = "model.layers.0.attention.wq.mindpet_delta_lora_a"
    rng = np.random.default_rng(1)
    adapter = {n: rng.standard_normal((8, 64) if n.endswith("lora_a") else (64, 8)).astype(np.float32)
               for n in lay if TARGET.match(n)}
    src = save(tmp_path / "with_moments.ckpt",
               {**full, **adapter, f"adam_m.{wq_a}": np.ones_like(adapter[wq_a])})
    res = shard(src, out, tmp_path / "a")
    got = load(res.files[1])
    np.testing.assert_array_equal(got[f"adam_m.{wq_a}"], np.ones_like(adapter[wq_a]))
    trainable = hand_strategy(tmp_path / "trainable.ckpt", {n: (v[0], v[1]) for n, v in lay.items() if TARGET.match(n)})
    res = shard(src, trainable, tmp_path / "b")
    np.testing.assert_array_equal(load(res.files[1])["model.layers.0.attention.wq.weight"],
                                  full["model.layers.0.attention.wq.weight"])
