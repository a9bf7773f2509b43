"""petrun.plan.measure: the measured-vs-planned record every finetune ends with."""
import resource

import pytest

from petrun.config import load_config
from petrun.plan import measure
from petrun.plan.estimator import estimate
from tests.conftest import ROOT

TINY = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"


def test_cpu_peak_is_this_process_high_water_mark():
    rec = measure.measured_peak("CPU")
    now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert rec["measure"] == "peak RSS of this process"
    assert 0 < rec["measured_peak"] <= now


def test_accelerator_branch_reads_mindspore_pool_statistics():
    # The Ascend/GPU branch calls MindSpore's runtime memory API; on CPU the pool reports 0,
    # which still proves the calls exist in this MindSpore and return integers.
    rec = measure.measured_peak("Ascend")
    assert rec["measure"] == "peak of MindSpore's Ascend memory pool"
    assert isinstance(rec["measured_peak"], int) and isinstance(rec["measured_allocated"], int)


def test_record_sets_the_plan_beside_the_measurement():
    cfg = load_config(TINY)
    rec = measure.memory_record(cfg, "CPU")
    assert rec["planned_peak"] == round(estimate(cfg, run_mode="finetune").peak)
    assert set(rec["planned_parts"]) >= {"weights", "activations", "head", "runtime"}
    assert "plan_error" in rec   # its arithmetic: test_plan_error_by_hand (this process is no run)


@pytest.mark.parametrize("measured, planned, error", [
    (2 * 2 ** 30, 3 * 2 ** 29, -0.25),          # 1.5 GiB / 2 GiB = 0.75 → 0.75 - 1
    (2_000_000_000, 2_300_000_000, 0.15),        # 2.3 / 2.0 = 1.15 → +0.15
    (3_000_000, 1_000_000, -0.6667),             # 1/3 - 1 = -0.66666… → 4 decimals
    (800, 1000, 0.25),                           # 1000/800 = 1.25 → +0.25
])
def test_plan_error_by_hand(monkeypatch, measured, planned, error):
    monkeypatch.setattr(measure, "measured_peak", lambda target: {
        "measured_peak": measured, "measure": "m"})
    monkeypatch.setattr(measure, "planned_peak", lambda cfg, run_mode="finetune": {
        "planned_peak": planned, "planned_parts": {}})
    assert measure.memory_record(None, "CPU")["plan_error"] == error


def test_console_line():
    rec = {"measured_peak": 2 * 2 ** 30, "measure": "peak RSS of this process",
           "planned_peak": int(1.5 * 2 ** 30), "plan_error": -0.25}
    assert measure.describe(rec) == ("memory: measured peak 2.00 GiB (peak RSS of this process); "
                                     "planned 1.50 GiB, 25.0% low")
    assert measure.describe({**rec, "plan_error": 0.125}).endswith("planned 1.50 GiB, 12.5% high")
    assert measure.describe({"measured_peak": 50 * 2 ** 20, "measure": "m"}) == \
        "memory: measured peak 50 MiB (m)"


def test_a_config_the_planner_cannot_size_gives_no_plan_not_an_error():
    cfg = load_config(TINY)
    cfg.data["model"]["arch"]["type"] = "NoSuchArch"
    assert measure.planned_peak(cfg) == {}


def test_memory_record_line_is_what_the_readme_greps_for():
    """README (On Ascend) asks a user with a card for the line `grep '"event": "memory"'` finds
    in log/rank_0/metrics.jsonl: the record as the metrics writer serialises it (json.dumps)."""
    import json
    rec = measure.memory_record(load_config(TINY), "Ascend")
    line = json.dumps(rec)
    assert '"event": "memory"' in line and '"device_target": "Ascend"' in line
    assert "planned_peak" in rec and "planned_parts" in rec
