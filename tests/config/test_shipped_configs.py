"""Shipped configs: `petrun configs list|copy`, `--config NAME` from any folder (a local file of
the same name wins), and the configs inside the wheel, so all of it works after a plain install."""
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT, run_cli

SHIPPED = ROOT / "petrun" / "configs"


def test_configs_list_names_every_shipped_file_with_its_summary():
    r = run_cli("configs", "list")
    assert r.returncode == 0, r.stderr
    files = sorted(SHIPPED.glob("*/*.yaml"))
    assert len(files) >= 15
    for f in files:
        assert f.stem in r.stdout, f.stem
    # the first comment line of the file is its description
    assert "LoRA on a tiny Llama2-architecture model" in r.stdout
    assert "llama2_base" in r.stdout and "(base, inherited by others)" in r.stdout


@pytest.mark.parametrize("name", ["lora_llama2_tiny.yaml", "lora_llama2_tiny",
                                  "llama2/lora_llama2_tiny"])
def test_config_name_resolves_to_the_shipped_file_from_any_folder(tmp_path, name):
    r = run_cli("config", "show", "--config", name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first == f"# Resolved from {SHIPPED / 'llama2' / 'lora_llama2_tiny.yaml'}"
    assert "lora_rank: 8" in r.stdout


def test_a_local_file_of_the_same_name_wins_and_copy_brings_its_bases(tmp_path):
    r = run_cli("configs", "copy", "lora_llama2_tiny.yaml", tmp_path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # the chain it inherits: lora_llama2_7b.yaml, then llama2_base.yaml
    assert sorted(p.name for p in tmp_path.glob("*.yaml")) == [
        "llama2_base.yaml", "lora_llama2_7b.yaml", "lora_llama2_tiny.yaml"]
    local = tmp_path / "lora_llama2_tiny.yaml"
    local.write_text(local.read_text().replace("seed: 0", "seed: 7"))
    r = run_cli("config", "show", "--config", "lora_llama2_tiny.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "# Resolved from lora_llama2_tiny.yaml"
    assert "\nseed: 7\n" in r.stdout
    # copying again over the files is refused without --overwrite
    again = run_cli("configs", "copy", "lora_llama2_tiny.yaml", tmp_path, cwd=tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_an_unknown_name_points_at_configs_list(tmp_path):
    r = run_cli("config", "validate", "--config", "lora_llama9_tiny.yaml", cwd=tmp_path)
    assert r.returncode == 2
    assert "config file not found" in r.stderr and "petrun configs list" in r.stderr


@pytest.mark.slow
def test_the_wheel_carries_the_configs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                        str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("petrun-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"petrun/configs/{p.parent.name}/{p.name}" for p in SHIPPED.glob("*/*.yaml")}
    assert want <= names, sorted(want - names)
