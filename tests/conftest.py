import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets"
PARITY_MODULES = ("torch", "transformers", "peft")


def pytest_sessionstart(session):
    """In CI the parity extra is part of the contract: without it the HF/PEFT oracle tests would
    skip and the run would still look green. Locally a missing extra only skips them."""
    if not os.environ.get("CI"):
        return
    import importlib.util
    missing = [m for m in PARITY_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise pytest.UsageError(
            f"CI is set but the parity extra is not installed (missing: {', '.join(missing)}); "
            "install it with PETRUN_EXTRAS=test,parity bash scripts/test.sh")


def step_records(out, rank: int = 0) -> list[dict]:
    """The per-step records of a run's metrics.jsonl (its eval, resume and memory events left
    out)."""
    path = Path(out) / "log" / f"rank_{rank}" / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


def run_cli(*args, cwd=None, env=None, timeout=600, input=None):
    """Run the real CLI in a subprocess: `python -m petrun ARGS`. Its stdin is `input` through a
    pipe, else empty (/dev/null), never the test runner's own (predict and chat read a piped
    stdin)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
    stdin = {} if input is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run([sys.executable, "-m", "petrun", *map(str, args)], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout,
                          input=input, **stdin)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs: a real ENOSPC for the disk-full cases (root may mount; elsewhere the
    RLIMIT_FSIZE cases cover a full disk)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the RLIMIT_FSIZE test covers it")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)
