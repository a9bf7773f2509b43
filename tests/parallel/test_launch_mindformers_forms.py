"""The launchers take MindFormers' command strings ("run_mindformer.py …", with or without python
or a folder in front) and msrun's own option spellings. Fast: no worker imports MindSpore (the
one real launch stops at a missing config)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from petrun.cli.launch_cmd import msrun_spellings
from petrun.errors import UserError
from petrun.parallel import launch as L
from tests.conftest import ROOT, run_cli
from tests.ports import with_free_port

SCRIPT = ROOT / "scripts" / "msrun_launcher.sh"
PETRUN_RUN = [sys.executable, "-m", "petrun", "run"]


@pytest.mark.parametrize("command", [
    "run_mindformer.py --config c.yaml --run_mode finetune",
    "python run_mindformer.py --config c.yaml --run_mode finetune",
    "python3 ./run_mindformer.py --config c.yaml --run_mode finetune",
    "/opt/mf/run_mindformer.py --config c.yaml --run_mode finetune",
])
def test_run_mindformer_commands_become_petrun_run(command):
    assert L.resolve_command(command) == [*PETRUN_RUN, "--config", "c.yaml", "--run_mode", "finetune"]


def test_a_relative_config_is_read_against_the_scripts_folder_as_mindformers_does(tmp_path):
    mf = tmp_path / "mindformers"
    (mf / "configs").mkdir(parents=True)
    (mf / "configs" / "x.yaml").write_text("seed: 1\n")
    got = L.resolve_command(f"python {mf}/run_mindformer.py --config configs/x.yaml --seed 2")
    assert got == [*PETRUN_RUN, "--config", f"{mf}/configs/x.yaml", "--seed", "2"]
    got = L.resolve_command(f"{mf}/run_mindformer.py --config=configs/x.yaml")
    assert got == [*PETRUN_RUN, f"--config={mf}/configs/x.yaml"]
    # not there: the path stays as typed (relative to the current folder)
    assert L.resolve_command(f"{mf}/run_mindformer.py --config configs/y.yaml")[-1] == "configs/y.yaml"


def test_the_seed_command_string_no_longer_says_script_not_found(tmp_path):
    """The seed's launcher line (WORKER_NUM 2, JOIN True): both workers run `petrun run`, reach
    the config and stop there with exit 2; the launcher names the rank and the reason."""
    logs = tmp_path / "logs"
    cmd = ("run_mindformer.py --config configs/llama2/no_such.yaml --train_dataset_dir D "
           "--load_checkpoint C --auto_trans_ckpt False --use_parallel True --run_mode finetune")
    r = with_free_port(lambda port: subprocess.run(
        ["bash", str(SCRIPT), cmd, "2", str(port), str(logs), "True", "60"],
        capture_output=True, text=True, timeout=120, cwd=ROOT))
    assert "script not found" not in r.stderr
    assert r.returncode == 2, r.stdout + r.stderr
    assert "exited with code 2" in r.stderr and "no_such.yaml" in r.stderr, r.stderr


# --------------------------------------------------------------------------- msrun's spellings
def test_msrun_spellings_become_petruns():
    args, notes = msrun_spellings([
        "--worker_num=2", "--local_worker_num", "2", "--join", "False", "--bind_core=True",
        "--log_dir", "l", "run_mindformer.py", "--config", "c", "--join", "True"])
    assert args == ["--worker_num=2", "--local_worker_num", "2", "--no-join", "--log_dir", "l",
                    "run_mindformer.py", "--config", "c", "--join", "True"]   # the command's own words stay
    assert notes == ["--bind_core is accepted and ignored: petrun does not pin workers to cores"]
    assert msrun_spellings(["--join=true", "--", "x"])[0] == ["--join", "--", "x"]
    assert msrun_spellings(["--join", "--", "x"])[0] == ["--join", "--", "x"]   # petrun's flag form


def test_petrun_launch_with_msrun_options(tmp_path):
    r = run_cli("launch", "--worker_num=2", "--master_port", "9123", "--log_dir", tmp_path / "l",
                "--join=False", "--cluster_time_out=60", "--bind_numa", "True", "--dry-run",
                "run_mindformer.py", "--config", "c.yaml", "--run_mode", "predict", "--log_dir", "x")
    assert r.returncode == 0, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert "2 worker(s) of 2:" in out and "-m petrun run --config c.yaml --run_mode predict --log_dir x" in out
    assert (f"msrun --worker_num=2 --local_worker_num=2 --master_port=9123 --log_dir={tmp_path / 'l'} "
            "--join=False --cluster_time_out=60 python -m petrun run") in out
    assert "--bind_numa is accepted and ignored" in r.stderr


@pytest.mark.parametrize("args,words", [
    (["--sim_level", "1"], ["--sim_level is not supported", "Fix: petrun launch --dry-run"]),
    (["--worker_log_name=w_{ip}"], ["--worker_log_name is not supported", "--log_dir"]),
    (["--join=maybe"], ["--join expects True or False, got 'maybe'"]),
    (["--worker_num", "2", "--tail_worker_log", "2"],
     ["--tail_worker_log 2 is not a worker of this node (0 to 1)"]),
    (["--worker_num=0"], ["worker number must be at least 1"]),
])
def test_petrun_launch_msrun_mistakes(tmp_path, args, words):
    r = run_cli("launch", *args, "--log_dir", tmp_path / "l", "--", "python", "-c", "pass")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Fix: " in r.stderr and "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    assert not (tmp_path / "l").exists()


def test_tail_worker_log_chooses_the_echoed_rank(tmp_path):
    script = tmp_path / "w.py"
    script.write_text("import os\nif os.environ['MS_ROLE'] == 'MS_WORKER':\n"
                      "    print('hello from rank', os.environ['RANK_ID'], flush=True)\n")
    r = with_free_port(lambda port: run_cli(
        "launch", "--worker_num", "2", "--master_port", port, "--log_dir", tmp_path / "l",
        "--tail_worker_log=1", "python", script, timeout=120))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hello from rank 1" in r.stdout and "hello from rank 0" not in r.stdout
