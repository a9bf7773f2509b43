"""The pre-flight: every run's seconds-fast checks before anything is built (exit 2 + fix)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from petrun.config import load_config
from petrun.preflight import PreflightError, run_preflight

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"
L7B = ROOT / "configs" / "llama2" / "lora_llama2_7b.yaml"
DATA = ROOT / "data" / "demo" / "alpaca_demo_seq256.jsonl"
OK = [f"train_dataset.data_loader.dataset_dir={DATA}", "load_checkpoint="]


def tiny(tmp_path, *overrides):
    return load_config(TINY, OK + [f"output_dir={tmp_path / 'out'}", *overrides])


def findings(cfg, verb="finetune", **kw):
    with pytest.raises(PreflightError) as err:
        run_preflight(cfg, verb, **kw)
    return err.value.findings


def test_7b_on_this_cpu_machine_stops_before_building(cli):
    # How fast: benchmarks/bench_preflight.py (RESULTS.md); here only what it says (the timeout
    # is a hang guard, not a speed claim).
    res = cli("finetune", "--config", L7B, timeout=300)
    assert res.returncode == 2, res.stderr
    text = " ".join(res.stderr.split())
    assert "pre-flight found" in text and "no Ascend device" in text
    assert "GiB per device" in text and "RAM is available now" in text      # needs vs has
    # what to change: the biggest lever, full recompute (petrun/models/recompute.py applies it)
    assert "recompute every layer" in text and "recompute_config.recompute=True" in text
    assert "use a smaller model" in text


def test_tiny_config_passes_without_importing_mindspore(tmp_path):
    # Its speed is measured in benchmarks/bench_preflight.py, not asserted here.
    code = ("import sys, json\n"
            "from petrun.config import load_config\n"
            "from petrun.preflight import run_preflight\n"
            f"cfg = load_config({str(TINY)!r}, {OK!r} + ['output_dir={tmp_path / 'out'}'])\n"
            "rep = run_preflight(cfg, 'finetune')\n"
            "print(json.dumps({'ms': 'mindspore' in sys.modules,\n"
            "                  'checked': rep.checked, 'line': rep.line()}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout.strip().splitlines()[-1])
    assert rep["ms"] is False
    assert rep["checked"] == ["model", "memory", "paths", "dataset"]
    assert "planned peak" in rep["line"]


def test_dead_target_alternative_is_the_pet_error(tmp_path):
    cfg = tiny(tmp_path, "model.model_config.pet_config.target_modules=.*wq|.*wz")
    (f,) = findings(cfg)
    assert f.check == "model" and f.key == "model.model_config.pet_config.target_modules"
    assert "'.*wz'" in f.message and "match no linear layer" in f.message
    assert f.fix


def test_unbuilt_pet_type(tmp_path):
    from petrun.pet import METHODS
    from petrun.pet.config import PET_CONFIGS
    unbuilt = sorted(set(PET_CONFIGS) - set(METHODS))
    if not unbuilt:
        pytest.skip("every configurable pet_type is built")
    cfg = tiny(tmp_path, "~model.model_config.pet_config",
               f"model.model_config.pet_config.pet_type={unbuilt[0]}")
    (f,) = findings(cfg)
    assert f.check == "model" and "not built yet" in f.message


def test_prompt_tokens_beyond_gpt2_positions(tmp_path):
    gpt2 = ROOT / "configs" / "gpt2" / "lora_gpt2_tiny.yaml"
    if not gpt2.exists():
        pytest.skip("no GPT2 tiny config in this tree")
    cfg = load_config(gpt2, [f"output_dir={tmp_path}", "~model.model_config.pet_config",
                             "model.model_config.pet_config.pet_type=prompt_tuning",
                             "model.model_config.pet_config.num_virtual_tokens=4096"])
    found = findings(cfg)
    assert found[0].check == "model" and "learned positions" in found[0].message


def test_dataset_tokenized_for_another_seq_length(tmp_path):
    cfg = tiny(tmp_path, "model.model_config.seq_length=128")
    (f,) = findings(cfg)
    assert f.check == "dataset" and "257 tokens" in f.message and "seq_length" in f.fix


def test_memory_that_does_not_fit_names_size_and_levers(tmp_path):
    from petrun.plan import estimate
    cfg = tiny(tmp_path)
    est = estimate(cfg)
    peak = est.peak
    # short by a fifth of what batch-sized tensors hold, so a lever that shrinks them can fit
    budget = int(peak - 0.2 * (est.activations + est.head))
    (f,) = findings(cfg, device_memory=budget)
    assert f.check == "memory"
    assert f"needs ~{peak / 2 ** 30:.1f} GiB" in f.message
    assert f"has {budget / 2 ** 30:.1f} GiB (--device-memory)" in f.message
    assert "add the overrides" in f.fix          # a lever route that fits
    (f,) = findings(cfg, device_memory=100 * 2 ** 20)
    assert "no lever" in f.fix                   # the runtime alone is bigger


def test_paths_and_all_problems_at_once(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = load_config(TINY, ["train_dataset.data_loader.dataset_dir=/nonexistent/data.jsonl",
                             f"load_checkpoint={tmp_path / 'missing.ckpt'}",
                             f"output_dir={blocker / 'out'}",
                             "model.model_config.pet_config.target_modules=.*wz"])
    found = findings(cfg)
    assert [f.check for f in found] == ["model", "paths", "paths", "paths"]
    keys = {f.key for f in found}
    assert {"load_checkpoint", "train_dataset.data_loader.dataset_dir", "output_dir"} <= keys


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """A base checkpoint and an adapter-only checkpoint written by the real model."""
    import mindspore as ms

    from petrun.api import build_model
    d = tmp_path_factory.mktemp("ckpt")
    cfg = load_config(TINY, OK)
    net = build_model(cfg, device_target="CPU")
    params = list(net.get_parameters())
    ms.save_checkpoint([p for p in params if "mindpet_delta" not in p.name], str(d / "base.ckpt"))
    ms.save_checkpoint([p for p in params if "mindpet_delta" in p.name], str(d / "adapter.ckpt"),
                       append_dict={"epoch_num": 1})
    ms.save_checkpoint(params[:3], str(d / "part.safetensors"), format="safetensors")
    return d


def test_checkpoint_that_matches_passes(tmp_path, tiny_checkpoints):
    for name in ("base.ckpt", "adapter.ckpt"):
        rep = run_preflight(tiny(tmp_path, f"load_checkpoint={tiny_checkpoints / name}"), "finetune")
        assert "checkpoint" in rep.checked


def test_checkpoint_of_another_size_or_family(tmp_path, tiny_checkpoints):
    base = f"load_checkpoint={tiny_checkpoints / 'base.ckpt'}"
    (f,) = findings(tiny(tmp_path, base, "model.model_config.vocab_size=600"))
    assert f.check == "checkpoint" and "shape mismatch" in f.message and "(512, 64)" in f.message
    (f,) = findings(tiny(tmp_path, base, "model.model_config.num_layers=3"))
    assert "not in the checkpoint" in f.message and "model.layers.2." in f.message
    (f,) = findings(tiny(tmp_path, f"load_checkpoint={tiny_checkpoints / 'part.safetensors'}"))
    assert "not in the checkpoint" in f.message


def test_skip_preflight_reaches_the_run(cli, tmp_path):
    args = ("finetune", "--config", TINY, "load_checkpoint=", f"output_dir={tmp_path}",
            "train_dataset.data_loader.dataset_dir=/nonexistent/data.jsonl")
    checked = cli(*args, timeout=120)
    assert checked.returncode == 2 and "pre-flight found 1 problem" in checked.stderr
    skipped = cli(*args, "--skip-preflight", timeout=120)
    assert skipped.returncode == 2 and "pre-flight" not in skipped.stderr
    assert "does not exist" in skipped.stderr


def test_adapter_of_eval_and_predict_must_exist(tmp_path):
    cfg = load_config(TINY, [f"eval_dataset.data_loader.dataset_dir={DATA}", "load_checkpoint="])
    (f,) = findings(cfg, "eval", adapter=str(tmp_path / "nope"))
    assert f.check == "paths" and f.key == "--adapter" and "does not exist" in f.message
    assert "checkpoint/rank_0" in f.fix
    assert "paths" in run_preflight(cfg, "eval", adapter=str(DATA)).checked   # an existing path
