"""petrun.plan.measure: the measured-vs-planned record every finetune ends with."""
import resource

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
    assert rec["plan_error"] == round(rec["planned_peak"] / rec["measured_peak"] - 1, 4)
    assert set(rec["planned_parts"]) >= {"weights", "activations", "head", "runtime"}


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
