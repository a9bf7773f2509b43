"""The launcher: MindFormers' positional forms, the command each process runs, the environment,
and supervision (a dying worker stops the job, the launcher names it). Fast tests drive small
Python workers; the slow ones run real data-parallel MindSpore training."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from petrun.errors import UserError
from petrun.parallel import launch as L
from tests.conftest import ROOT, run_cli
from tests.ports import free_port, with_free_port

SCRIPT = ROOT / "scripts" / "msrun_launcher.sh"

FAKE = """
import os, sys, time
role, rank = os.environ["MS_ROLE"], os.environ.get("RANK_ID")
print("env", role, rank, os.environ["MS_WORKER_NUM"], os.environ.get("DEVICE_ID"),
      os.environ["MS_SCHED_PORT"], os.environ.get("MS_NODE_ID"), flush=True)
if role == "MS_SCHED":
    sys.exit(0)
mode, seconds = sys.argv[1], float(sys.argv[2])
if mode == "gate":   # wait (at most `seconds`) for the file argv[3], then rank 1 fails
    deadline = time.monotonic() + seconds
    while not os.path.exists(sys.argv[3]) and time.monotonic() < deadline:
        time.sleep(0.05)
    mode = "fail"
if mode == "fail" and rank == "1":
    time.sleep(0.3)
    print("boom: the last words of rank 1", flush=True)
    sys.exit(3)
time.sleep(seconds)
print("done", rank, flush=True)
"""


@pytest.fixture
def fake(tmp_path):
    p = tmp_path / "fake_worker.py"
    p.write_text(FAKE)
    return p


def spec(tmp_path, **kw):
    return L.LaunchSpec(worker_num=kw.pop("worker_num", 2), master_port=free_port(),
                        log_dir=str(tmp_path / "logs"), grace_s=2, **kw)


# --------------------------------------------------------------------------- argument forms
def test_mindformers_positional_forms():
    s, cmd = L.parse_mindformers_args(["petrun finetune --config c.yaml"], env={})
    assert cmd == "petrun finetune --config c.yaml"
    assert (s.worker_num, s.local, s.master_addr, s.master_port, s.node_rank, s.log_dir, s.join,
            s.cluster_time_out) == (8, 8, "127.0.0.1", 8118, 0, "output/msrun_log", False, 7200)
    s, _ = L.parse_mindformers_args(["c", "4"], env={})
    assert (s.worker_num, s.local) == (4, 4)
    s, _ = L.parse_mindformers_args(["c", "4", "9000", "logs", "True", "300"], env={"MF_LOG_SUFFIX": "x"})
    assert (s.worker_num, s.master_port, s.log_dir, s.join, s.cluster_time_out) == (4, 9000, "logs_x", True, 300)
    s, _ = L.parse_mindformers_args(["c", "16", "8", "10.0.0.1", "8118", "1", "logs", "False", "300"], env={})
    assert (s.worker_num, s.local, s.master_addr, s.node_rank, s.join) == (16, 8, "10.0.0.1", 1, False)
    assert [s.global_rank(i) for i in (0, 7)] == [8, 15]


@pytest.mark.parametrize("args, match", [
    (["c", "2", "3"], "expected 1, 2, 6 or 9 arguments, got 3"),
    (["c", "two"], "WORKER_NUM must be a number"),
    (["c", "2", "9000", "logs", "maybe", "300"], "JOIN must be True or False"),
])
def test_bad_positional_arguments(args, match):
    with pytest.raises(UserError, match=match):
        L.parse_mindformers_args(args, env={})


def test_commands_run_with_this_interpreter(fake):
    assert L.resolve_command("petrun finetune --config 'a b.yaml'") == [
        sys.executable, "-m", "petrun", "finetune", "--config", "a b.yaml"]
    assert L.resolve_command("python -m pkg.mod --x 1") == [sys.executable, "-m", "pkg.mod", "--x", "1"]
    assert L.resolve_command(f"{fake} a") == [sys.executable, str(fake), "a"]
    with pytest.raises(UserError, match="script not found"):
        L.resolve_command("missing_script.py")
    with pytest.raises(UserError, match="the workers run Python"):
        L.resolve_command("bash run.sh")


def test_worker_environment_is_msruns():
    s = L.LaunchSpec(worker_num=4, master_port=9123, cluster_time_out=60)
    env = L.process_env(s, "MS_WORKER", "127.0.0.1", 3, 3, "job", base={"PATH": "/usr/bin"})
    assert {k: env[k] for k in ("MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_NODE_ID",
                                "RANK_ID", "RANK_SIZE", "DEVICE_ID", "MS_TOPO_TIMEOUT")} == {
        "MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "9123", "MS_WORKER_NUM": "4",
        "MS_NODE_ID": "3", "RANK_ID": "3", "RANK_SIZE": "4", "DEVICE_ID": "3", "MS_TOPO_TIMEOUT": "60"}
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    sched = L.process_env(s, "MS_SCHED", "127.0.0.1", base={"PATH": "/usr/bin", "MS_NODE_ID": "9"})
    assert sched["MS_ROLE"] == "MS_SCHED" and sched["RANK_ID"] == "0" and "MS_NODE_ID" not in sched
    assert L.msrun_equivalent(s, [sys.executable, "-m", "petrun", "finetune"])[-4:] == [
        "python", "-m", "petrun", "finetune"]


# --------------------------------------------------------------------------- supervision
def test_all_workers_succeed(tmp_path, fake):
    s = spec(tmp_path)
    res = L.launch(s, f"{fake} ok 0.2")
    assert res.rc == 0, res.message
    logs = Path(s.log_dir)
    assert "env MS_WORKER 1 2 1" in (logs / "worker_1.log").read_text()
    assert "done 0" in (logs / "worker_0.log").read_text()
    assert "env MS_SCHED 0" in (logs / "scheduler.log").read_text()
    procs = json.loads((logs / L.PROCS_FILE).read_text())["processes"]
    assert [p["name"] for p in procs] == ["scheduler", "rank 0", "rank 1"]
    assert json.loads((logs / L.STATUS_FILE).read_text())["rc"] == 0


def test_a_failing_worker_stops_the_others_and_is_named(tmp_path, fake):
    s = spec(tmp_path)
    res = L.launch(s, f"{fake} fail 60")
    # rank 0 (sleeping 60 s, then printing "done") was stopped, not waited for:
    assert "done" not in (Path(s.log_dir) / "worker_0.log").read_text()
    assert res.rc == 3 and res.failed == "rank 1"
    assert res.message.startswith("rank 1 exited with code 3; stopped rank 0")
    assert res.tail[-1] == "boom: the last words of rank 1"
    assert "worker_1.log" in res.message
    status = json.loads((Path(s.log_dir) / L.STATUS_FILE).read_text())
    assert status["failed"] == "rank 1" and status["rc"] == 3


def test_a_killed_worker_is_reported_with_its_signal(tmp_path, fake):
    s = spec(tmp_path)
    argv = L.resolve_command(f"{fake} ok 60")
    procs = L.start(s, argv)
    victim = next(p for p in procs if p.name == "rank 0")
    time.sleep(0.5)
    os.kill(victim.popen.pid, signal.SIGKILL)
    res = L.supervise(s, procs)
    assert res.rc == 128 + signal.SIGKILL and res.failed == "rank 0"
    assert "rank 0 was killed by SIGKILL; stopped rank 1" in res.message
    assert all(p.popen.poll() is not None for p in procs)


def test_no_join_returns_at_once_and_the_supervisor_records_the_outcome(tmp_path, fake):
    s = spec(tmp_path, join=False)
    gate = tmp_path / "go"
    pid = L.launch(s, f"{fake} gate 120 {gate}")
    # Returned while the workers still wait for the gate (a launch that joined would block
    # until they gave up after 120 s, and the status would then be there).
    assert isinstance(pid, int) and not (Path(s.log_dir) / L.STATUS_FILE).exists()
    gate.touch()
    status = wait_status(Path(s.log_dir), 60)
    assert status["rc"] == 3 and status["failed"] == "rank 1"


def test_port_in_use_is_named(tmp_path, fake):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        s = spec(tmp_path)
        s.master_port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"port {s.master_port} on 127.0.0.1 is in use"):
            L.launch(s, f"{fake} ok 0")


def wait_status(log_dir: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads((log_dir / L.STATUS_FILE).read_text())
        except (OSError, ValueError):
            time.sleep(0.2)
    raise AssertionError(f"no {L.STATUS_FILE} in {log_dir} after {timeout} s")


# --------------------------------------------------------------------------- the two front ends
def run_script(*args, timeout=120, cwd=None):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_script_forms_and_errors(tmp_path, fake):
    r = run_script(f"{fake} ok 0", 1)
    assert r.returncode == 0 and "WORKER_NUM is 1" in r.stdout           # MindFormers refuses too
    r = run_script(f"{fake} ok 0", 2, 3)
    assert r.returncode == 2 and "expected 1, 2, 6 or 9 arguments" in r.stderr
    logs = tmp_path / "logs"
    r = with_free_port(lambda port: run_script(f"{fake} fail 60", 2, port, logs, "True", 60))
    assert r.returncode == 3
    assert "rank 1 exited with code 3" in r.stderr and "boom: the last words of rank 1" in r.stderr


def test_petrun_launch_cli(tmp_path, fake):
    r = run_cli("launch", "--worker-num", 2, "--log-dir", tmp_path / "l", "--dry-run", "--",
                "petrun", "finetune", "--config", "x.yaml")
    assert r.returncode == 0 and "msrun --worker_num=2" in r.stdout and "-m petrun finetune" in r.stdout
    r = with_free_port(lambda port: run_cli(
        "launch", "--worker-num", 2, "--master-port", port, "--log-dir", tmp_path / "l",
        "--", "python", fake, "fail", "60"))
    assert r.returncode == 3
    assert "rank 1 exited with code 3" in r.stderr and "boom" in r.stderr


# --------------------------------------------------------------------------- real MindSpore (slow)
DRIVER = ROOT / "tests" / "parallel" / "dp_driver.py"


def uniform_data(path: Path, n: int = 32, seq: int = 32) -> Path:
    """Every token counts in the loss (no padding, no masked prompt), so the per-rank mean losses
    average to the global-batch mean exactly: the precondition for DP == one process."""
    import numpy as np
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for _ in range(n):
            ids = rng.integers(3, 512, seq + 1).tolist()
            f.write(json.dumps({"input_ids": ids, "labels": ids}) + "\n")
    return path


def read_run(out: Path, rank: int):
    from tests.parallel.strategy_helpers import load
    return load(out / f"rank_{rank}" / "adapter.ckpt"), json.loads((out / f"rank_{rank}" / "losses.json").read_text())


@pytest.mark.slow
def test_data_parallel_two_workers_equal_one_process(tmp_path):
    """bash scripts/msrun_launcher.sh "<command>" 2 (MindFormers' 2-argument form: returns at once),
    then the job: both ranks end with identical adapters, equal to one process on the same global
    batch."""
    import numpy as np
    data = uniform_data(tmp_path / "data.jsonl")
    steps = 3
    ref = subprocess.run([sys.executable, str(DRIVER), "--data", str(data), "--out", str(tmp_path / "ref"),
                          "--batch", "4", "--steps", str(steps)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={**os.environ, "GLOG_v": "3"})
    assert ref.returncode == 0, ref.stdout + ref.stderr
    logs = tmp_path / "msrun_log"
    cmd = f"python {DRIVER} --data {data} --out {tmp_path / 'dp'} --batch 2 --steps {steps} --parallel"
    r = run_script(cmd, 2, cwd=tmp_path)       # default log dir is relative to the working folder
    assert r.returncode == 0 and "in the background" in r.stdout, r.stdout + r.stderr
    status = wait_status(tmp_path / "output" / "msrun_log", 150)
    assert status["rc"] == 0, status
    (a0, l0), (a1, l1), (ar, lr) = read_run(tmp_path / "dp", 0), read_run(tmp_path / "dp", 1), read_run(tmp_path / "ref", 0)
    assert l0["world"] == l1["world"] == 2 and lr["world"] == 1
    assert set(a0) == set(ar) and len(a0) == 16                   # 2 layers × 4 targets × (A, B)
    for k in a0:
        np.testing.assert_array_equal(a0[k], a1[k], err_msg=k)   # ranks identical, bit for bit
        np.testing.assert_allclose(a0[k], ar[k], atol=1e-4, rtol=0, err_msg=k)
        assert np.abs(ar[k]).max() > 0, k                          # B moved off its zero init too
    # the loss of the global batch is the mean of the two ranks' losses
    np.testing.assert_allclose((np.array(l0["losses"]) + np.array(l1["losses"])) / 2, lr["losses"], atol=1e-5)
    assert not np.allclose(l0["losses"], l1["losses"])            # the ranks did see different data


@pytest.mark.slow
def test_killing_a_worker_mid_run_ends_the_job(tmp_path):
    data = uniform_data(tmp_path / "data.jsonl")
    logs = tmp_path / "logs"
    p = subprocess.Popen([sys.executable, "-m", "petrun", "launch", "--worker-num", "2", "--master-port",
                          str(free_port()), "--log-dir", str(logs), "--", "python", str(DRIVER), "--data",
                          str(data), "--out", str(tmp_path / "dp"), "--batch", "2", "--steps", "8",
                          "--sleep", "2", "--parallel"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            log = logs / "worker_1.log"
            if log.exists() and "step 1 " in log.read_text():
                break
            time.sleep(0.5)
        else:
            raise AssertionError("rank 1 never trained a step")
        procs = json.loads((logs / L.PROCS_FILE).read_text())["processes"]
        pids = {q["name"]: q["pid"] for q in procs}
        os.kill(pids["rank 1"], signal.SIGKILL)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + signal.SIGKILL, out + err
    assert "rank 1 was killed by SIGKILL; stopped rank 0" in err, err
    assert "rank 1/2 step 1" in err                                  # its last log lines are shown
    for pid in pids.values():                                        # nothing is left running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
def test_semi_auto_parallel_under_the_launcher_is_refused_on_cpu(tmp_path):
    r = with_free_port(lambda port: run_cli(
        "launch", "--worker-num", 2, "--master-port", port, "--log-dir", tmp_path / "l", "--",
        "petrun", "finetune", "--config", "configs/llama2/lora_llama2_tiny.yaml", "--use_parallel", "True",
        "parallel.parallel_mode=1", f"output_dir={tmp_path / 'out'}", timeout=120))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "exited with code 2" in r.stderr and "parallel.parallel_mode=0" in r.stderr
