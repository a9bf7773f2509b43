"""A failed or interrupted graph compile makes MindSpore write rank_N/om/analyze_fail.ir; under
petrun it lands in the run's <output_dir>/log/, not in the folder the user ran from (issue 17:
a second Ctrl-C during compile left analyze_fail.ir in the working folder)."""
import os
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = """
import sys
import numpy as np
from mindspore import Tensor, nn, ops
from petrun.config import load_config
from petrun.parallel.context import setup_context
setup_context(load_config(sys.argv[1], ["output_dir=" + sys.argv[2]]))
class Bad(nn.Cell):
    def construct(self, x):
        return ops.matmul(x, "not a tensor")     # fails in graph compile
try:
    Bad()(Tensor(np.ones((2, 2), np.float32)))
except Exception as e:
    print("compile failed:", type(e).__name__)
"""


def _run(tmp_path, env):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT / "configs/llama2/lora_llama2_tiny.yaml"),
                        str(tmp_path / "out")], cwd=cwd, capture_output=True, text=True,
                       timeout=300, env={k: v for k, v in {**os.environ, **env}.items() if v is not None})
    assert "compile failed" in r.stdout, r.stdout + r.stderr
    return cwd


def test_analyze_fail_ir_goes_to_the_runs_log_folder(tmp_path):
    cwd = _run(tmp_path, {"MS_OM_PATH": None})
    assert (tmp_path / "out" / "log" / "rank_0" / "om" / "analyze_fail.ir").is_file()
    assert not list(cwd.rglob("*"))                       # nothing in the working folder


def test_a_users_ms_om_path_wins(tmp_path):
    _run(tmp_path, {"MS_OM_PATH": str(tmp_path / "mine")})
    assert (tmp_path / "mine" / "rank_0" / "om" / "analyze_fail.ir").is_file()
    assert not (tmp_path / "out" / "log").exists()
