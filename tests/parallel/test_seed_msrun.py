"""Issue 14's acceptance: the user documents' MindFormers launcher line, unchanged but for the tiny
config, the bundled data, 2 workers instead of 8 and the 6-argument form with JOIN True (so the
test waits), runs on 2 CPU workers through `petrun run`: finetune to a saved adapter, then
predict with --run_mode predict and --predict_data."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.parallel.strategy_helpers import load
from tests.ports import with_free_port

pytestmark = pytest.mark.slow

TINY = "configs/llama2/lora_llama2_tiny.yaml"
BASE = "data/demo/llama2_tiny_base.ckpt"
DATA = "data/demo/alpaca_demo_seq256.jsonl"


def launcher(command: str, logs: Path, timeout: int = 300):
    """bash scripts/msrun_launcher.sh "COMMAND" 2 PORT LOG_DIR True 300, from the repo root as the
    documents run it from MindFormers' root."""
    return with_free_port(lambda port: subprocess.run(
        ["bash", str(ROOT / "scripts" / "msrun_launcher.sh"), command, "2", str(port), str(logs),
         "True", "300"], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}))


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seed")
    out = tmp / "out"
    # The seed's words; --epochs/--output_dir are run_mindformer.py flags too; stop_step keeps it short.
    cmd = (f"run_mindformer.py --config {TINY} --train_dataset_dir {DATA} --load_checkpoint {BASE} "
           f"--auto_trans_ckpt False --use_parallel True --run_mode finetune "
           f"--epochs 1 --output_dir {out} runner_config.stop_step=4")
    r = launcher(cmd, tmp / "logs")
    return r, out, tmp


def test_seed_finetune_runs_two_workers_to_a_saved_adapter(finetuned):
    r, out, tmp = finetuned
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "all 2 workers finished" in r.stdout
    assert "step 4/4" in r.stdout                                  # rank 0's progress, echoed
    # both ranks ran petrun's finetune as data parallel ranks of one job
    for rank in (0, 1):
        log = (tmp / "logs" / f"worker_{rank}.log").read_text()
        assert "Traceback" not in log
    adapters = []
    for rank in (0, 1):
        files = sorted((out / "checkpoint" / f"rank_{rank}").glob("*.ckpt"))
        assert files, f"no adapter for rank {rank}"
        adapters.append({k: v for k, v in load(files[-1]).items() if "lora" in k})
    assert len(adapters[0]) == 16 and set(adapters[0]) == set(adapters[1])
    for k in adapters[0]:
        np.testing.assert_array_equal(adapters[0][k], adapters[1][k], err_msg=k)   # one job, one model
    assert any(np.abs(v).max() > 0 for k, v in adapters[0].items() if "lora_b" in k)  # B trained off 0


def test_seed_predict_generates_from_predict_data(finetuned):
    r0, out, tmp = finetuned
    assert r0.returncode == 0
    prompt = "Below is an instruction that describes a task."
    adapter = out / "checkpoint" / "rank_0"
    cmd = (f"python run_mindformer.py --config {TINY} --load_checkpoint {BASE} --auto_trans_ckpt False "
           f"--use_parallel True --run_mode predict --predict_data {shlex.quote(prompt)} "
           f"--adapter {adapter} --max-new-tokens 6 --output json --output_dir {tmp / 'pred'}")
    logs = tmp / "pred_logs"
    r = launcher(cmd, logs)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from petrun.config import load_config
    from petrun.data.tokenizer import load_tokenizer
    from petrun.infer.chat import encode_prompt
    tok = load_tokenizer(load_config(ROOT / TINY).get("processor.tokenizer"))
    for rank in (0, 1):
        log = (logs / f"worker_{rank}.log").read_text()
        assert f"loaded 16 lora tensors from {adapter}" in log
        lines = [line for line in log.splitlines() if line.startswith('{"results"')]
        assert len(lines) == 1, log[-2000:]
        (res,) = json.loads(lines[0])["results"]
        # MindFormers' pipeline takes --predict_data as it is: no chat template around it
        assert res["prompt"] == prompt and res["prompt_ids"] == encode_prompt("none", prompt, tok)
        assert len(res["ids"]) == 6 and res["text"].strip(), res        # six new tokens, as text
