"""The distributed context: what use_parallel + parallel + parallel_config turn into, and the
refusals that replace MindSpore's cryptic failures (semi-auto parallel on CPU, no launcher)."""
from __future__ import annotations

import pytest

from petrun.config import load_config
from petrun.errors import UserError
from petrun.parallel import context as C
from tests.conftest import ROOT, run_cli

TINY = str(ROOT / "configs/llama2/lora_llama2_tiny.yaml")
B7 = str(ROOT / "configs/llama2/lora_llama2_7b.yaml")


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for k in ("MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_NODE_ID"):
        monkeypatch.delenv(k, raising=False)
    C._reset_for_tests()
    yield
    C._reset_for_tests()


@pytest.mark.parametrize("value, name", [(0, "DATA_PARALLEL"), (1, "SEMI_AUTO_PARALLEL"), (2, "AUTO_PARALLEL"),
                                         ("semi_auto_parallel", "SEMI_AUTO_PARALLEL"), ("DATA_PARALLEL", "DATA_PARALLEL")])
def test_parallel_mode_names(value, name):
    assert C.parallel_mode(load_config(TINY, [f"parallel.parallel_mode={value}"])) == name


def test_unknown_parallel_mode_is_a_config_error():
    with pytest.raises(UserError, match="parallel.parallel_mode: must be one of"):
        load_config(TINY, ["parallel.parallel_mode=7"])


def test_use_parallel_without_a_launcher_says_how_to_launch():
    with pytest.raises(UserError) as e:
        C.check_launch(load_config(TINY, ["use_parallel=True"]), "CPU")
    assert e.value.key == "use_parallel" and "petrun launch" in str(e.value) and "msrun_launcher.sh" in str(e.value)


def test_launched_without_use_parallel_is_refused(monkeypatch):
    monkeypatch.setenv("MS_ROLE", "MS_WORKER")
    with pytest.raises(UserError, match="every worker would train alone"):
        C.check_launch(load_config(TINY, []), "CPU")


def test_semi_auto_parallel_is_refused_on_cpu(monkeypatch):
    monkeypatch.setenv("MS_ROLE", "MS_WORKER")
    cfg = load_config(TINY, ["use_parallel=True", "parallel.parallel_mode=1"])
    with pytest.raises(UserError) as e:
        C.check_launch(cfg, "CPU")
    assert e.value.key == "parallel.parallel_mode"
    assert "SEMI_AUTO_PARALLEL" in str(e.value) and "parallel.parallel_mode=0" in str(e.value)
    C.check_launch(cfg, "Ascend")   # fine where it can run
    with pytest.raises(UserError, match="enable_parallel_optimizer"):
        C.check_launch(load_config(TINY, ["use_parallel=True", "parallel.enable_parallel_optimizer=True"]), "CPU")
    with pytest.raises(UserError, match="STAND_ALONE"):
        C.check_launch(load_config(TINY, ["use_parallel=True", "parallel.parallel_mode=STAND_ALONE"]), "CPU")


def test_setup_context_refuses_before_init(monkeypatch):
    """The refusal happens before MindSpore's init(), so the scheduler process exits too."""
    monkeypatch.setenv("MS_ROLE", "MS_SCHED")
    cfg = load_config(TINY, ["use_parallel=True", "parallel.parallel_mode=1"])
    with pytest.raises(UserError, match="parallel.parallel_mode"):
        C.setup_context(cfg)
    assert C.distributed().world == 1


def test_data_parallel_context():
    kw, notes = C.parallel_context(load_config(TINY, ["use_parallel=True", "parallel.gradients_mean=True"]), 2, 1)
    assert kw == {"parallel_mode": "DATA_PARALLEL", "device_num": 2, "gradients_mean": True, "full_batch": False}
    assert notes == []
    kw, notes = C.parallel_context(load_config(TINY, ["use_parallel=True", "parallel.gradients_mean=False"]), 2, 0)
    assert kw["gradients_mean"] is False and "summed" in notes[0]


def test_semi_auto_context_from_parallel_config():
    cfg = load_config(B7, ["parallel_config.data_parallel=2", "parallel_config.model_parallel=2",
                           "parallel_config.pipeline_stage=2", "output_dir=/o"])
    kw, _ = C.parallel_context(cfg, 8, 5)
    assert kw["parallel_mode"] == "SEMI_AUTO_PARALLEL" and kw["device_num"] == 8
    assert kw["pipeline_stages"] == 2 and kw["full_batch"] is True and kw["enable_parallel_optimizer"] is True
    # MindFormers rewrites the strategy path per rank under output_dir/strategy
    assert kw["strategy_ckpt_config"] == {"save_file": "/o/strategy/ckpt_strategy_rank_5.ckpt",
                                          "only_trainable_params": False}
    with pytest.raises(UserError, match="= 8, but the job has 4 devices") as e:
        C.parallel_context(cfg, 4, 0)
    assert e.value.key == "parallel_config"


def test_cli_use_parallel_without_launcher_exits_2():
    r = run_cli("finetune", "--config", TINY, "--use_parallel", "True", "runner_config.epochs=1")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "petrun launch" in r.stderr and "Traceback" not in r.stderr


def test_loader_batch_follows_mindformers_global_batch(monkeypatch):
    """Semi-auto full_batch: every rank reads batch × dp (× micro_batch_num with pipeline
    stages) samples per step and MindSpore slices them; data parallel reads its own batch."""
    cfg = load_config(B7, ["parallel_config.data_parallel=2", "parallel_config.model_parallel=2",
                           "parallel_config.pipeline_stage=2", "parallel_config.micro_batch_num=4",
                           "output_dir=/o"])
    kw, _ = C.parallel_context(cfg, 8, 3)
    monkeypatch.setattr(C, "_STATE", C.Distributed(3, 8, "SEMI_AUTO_PARALLEL", kw))
    assert C.loader_batch(cfg, 2) == 2 * 2 * 4
    assert C.data_shard(cfg) == (1, 0)
    monkeypatch.setattr(C, "_STATE", C.Distributed(3, 8, "DATA_PARALLEL", {"full_batch": False}))
    assert C.loader_batch(cfg, 2) == 2
    monkeypatch.setattr(C, "_STATE", C.Distributed())
    assert C.loader_batch(cfg, 2) == 2 and C.pipeline_wrap(cfg, "net", [])[1] is None
