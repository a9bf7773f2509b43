"""`petrun launch`: worker-count mistakes (message, Fix, exit 2) and what rank 0's echo shows:
MindSpore's C++ INFO lines stay in the worker log unless the user asked for them with GLOG_v.
The workers are small Python scripts (no MindSpore), so these run in a few seconds."""

import pytest

from petrun.parallel import launch as L
from tests.conftest import run_cli
from tests.ports import with_free_port

WORKER = """
import os, sys, time
if os.environ["MS_ROLE"] == "MS_SCHED":
    sys.exit(0)
if os.environ["RANK_ID"] != "0":
    sys.exit(0)
print("GLOG_v=" + os.environ.get("GLOG_v", "unset"), flush=True)
print("[WARNING] ME(7,7f,python):2026-01-01 [x.cc:1] F] a warning stays", flush=True)
# an INFO line written in two pieces: the echo must still recognise it as one line
print("[INFO] DISTRIBUTED(7,7f25,python):2026-01-01 [tcp_server.cc:314] ", end="", flush=True)
time.sleep(0.5)
print("Start] Event base dispatch success!", flush=True)
print("done", flush=True)
"""


@pytest.mark.parametrize("args,message,fix", [
    (("--worker-num", "0"), "key '--worker-num': worker number must be at least 1, got 0",
     "e.g. --worker-num 2"),
    (("--worker-num", "2", "--local-worker-num", "3"),
     "key '--local-worker-num': local worker number 3 must be between 1 and the worker number 2",
     "leave --local-worker-num out to run all 2 workers on this node"),
    (("--worker-num", "2", "--master-port", "70000"), "key '--master-port': port 70000 is out of range",
     "between 1 and 65535"),
])
def test_bad_worker_numbers(tmp_path, args, message, fix):
    r = run_cli("launch", *args, "--log-dir", tmp_path / "l", "--", "python", "-c", "pass")
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "\nFix: " in r.stderr and fix in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "l").exists()          # refused before anything started


def _launch(tmp_path, glog):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    logs = tmp_path / "logs"
    r = with_free_port(lambda port: run_cli(
        "launch", "--worker-num", 2, "--master-port", port, "--log-dir", logs,
        "--", "python", script, env={"GLOG_v": glog}, timeout=120))
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout, (logs / "worker_0.log").read_text()


def test_echo_leaves_mindspore_info_lines_in_the_log(tmp_path):
    out, log = _launch(tmp_path, "2")
    assert "GLOG_v=2" in out and "a warning stays" in out and "done" in out
    assert "Event base dispatch success!" not in out and "[INFO]" not in out, out
    assert "[INFO] DISTRIBUTED(7,7f25,python)" in log and "Event base dispatch success!" in log


def test_echo_shows_info_lines_when_the_user_asks_for_them(tmp_path):
    out, _ = _launch(tmp_path, "1")
    assert "GLOG_v=1" in out
    assert "[INFO] DISTRIBUTED(7,7f25,python):2026-01-01 [tcp_server.cc:314] Start] Event base " \
           "dispatch success!" in out, out


def test_workers_default_to_warnings_and_keep_a_users_level():
    spec = L.LaunchSpec(worker_num=2, master_port=9123)
    for role in ("MS_WORKER", "MS_SCHED"):
        env = L.process_env(spec, role, "127.0.0.1", 0, 0, "job", base={"PATH": "/usr/bin"})
        assert env["GLOG_v"] == "2"
        env = L.process_env(spec, role, "127.0.0.1", 0, 0, "job",
                            base={"PATH": "/usr/bin", "GLOG_v": "0"})
        assert env["GLOG_v"] == "0"
    assert L.quiet_echo({}) and L.quiet_echo({"GLOG_v": "3"})
    assert not L.quiet_echo({"GLOG_v": "1"}) and not L.quiet_echo({"GLOG_v": "0"})
