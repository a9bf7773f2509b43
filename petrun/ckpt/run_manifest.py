"""output_dir/run_manifest.json: what produced the files in an output folder.

One entry per invocation (a resumed run adds one): the command line, the resolved config and its
hash, petrun/MindSpore/numpy/Python versions, the seed, the data files with size and SHA-256, the
pretrained checkpoint files with size, and where a resumed invocation started. Enough to tell,
months later, whether two runs are comparable and to repeat one.
"""
from __future__ import annotations

import json
import platform
import shlex
import socket
import sys
import time
from pathlib import Path

from petrun.atomic import write_text_atomic

NAME = "run_manifest.json"
FORMAT = "petrun.run/1"


def versions() -> dict:
    import mindspore
    import numpy

    from petrun.version import __version__
    return {"petrun": __version__, "mindspore": mindspore.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def record_invocation(output_dir: Path, entry: dict) -> Path:
    """Append `entry` (plus time, host, command line, versions) to the run manifest, atomically."""
    path = Path(output_dir) / NAME
    runs: list = []
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(old, dict) and isinstance(old.get("invocations"), list):
            runs = old["invocations"]
    except (OSError, ValueError):
        pass  # first invocation, or an unreadable file that this one replaces
    runs.append({"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
                 "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                 "cwd": str(Path.cwd()), "versions": versions(), **entry})
    return write_text_atomic(path, json.dumps({"format": FORMAT, "invocations": runs}, indent=1) + "\n")
