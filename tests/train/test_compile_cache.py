"""The cross-run compile cache's key (petrun/train/compile_cache.py): identical builds share a
graph folder; anything the compiled graph depends on (constants such as lora_alpha, parameter
shapes such as the lr table's length, input shapes, dropout seeds) gives another folder."""
import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

import petrun  # noqa: E402
from petrun.train import compile_cache  # noqa: E402
from petrun.train.step import TrainStep  # noqa: E402
from petrun.train.optim import build_optimizer  # noqa: E402

CONFIG = "configs/llama2/lora_llama2_tiny.yaml"


def _key(overrides=(), steps=10, shape=(2, 17), seed=0):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(seed)
    cfg = petrun.load_config(CONFIG, ["load_checkpoint=''", *overrides])
    net = petrun.build_model(cfg)
    params = list(net.trainable_params())
    opt = build_optimizer(params, cfg.get("optimizer") or {}, np.full(steps, 1e-4, np.float32))
    cell = TrainStep(net, opt, 1.0, None, 1.0, True)
    ids = ms.Tensor(np.ones(shape, np.int32))
    return compile_cache.graph_key(cell, (ids, ids))


def test_same_build_same_key_and_every_graph_input_changes_it():
    base = _key()
    assert _key() == base
    assert _key(["model.model_config.pet_config.lora_alpha=32"]) != base      # a folded constant
    assert _key(["model.model_config.pet_config.lora_rank=4"]) != base        # parameter shapes
    assert _key(["model.model_config.pet_config.lora_dropout=0.1"]) != base   # dropout rate
    assert _key(steps=11) != base                                             # lr table length
    assert _key(shape=(4, 17)) != base                                        # input shapes
    assert _key(["model.model_config.theta=500.0"]) != base               # rope tables


def test_switches(monkeypatch):
    ms.set_context(mode=ms.GRAPH_MODE)
    monkeypatch.delenv("MS_COMPILER_CACHE_ENABLE", raising=False)
    monkeypatch.delenv("MS_ROLE", raising=False)
    monkeypatch.setenv("PETRUN_COMPILE_CACHE", "1")
    assert compile_cache.enabled()
    monkeypatch.setenv("PETRUN_COMPILE_CACHE", "0")
    assert not compile_cache.enabled()
    monkeypatch.setenv("PETRUN_COMPILE_CACHE", "1")
    monkeypatch.setenv("MS_COMPILER_CACHE_ENABLE", "1")   # the user's own setting stands
    assert not compile_cache.enabled()


# One process: build and step the tiny LoRA config once per lora_alpha given, with a non-zero
# LoRA B so that alpha (a constant folded into the graph) changes the first loss; print them.
WORKER = r"""
import json, sys
import numpy as np
import mindspore as ms
import petrun
from petrun.train.optim import build_optimizer
from petrun.train.step import TrainStep
ms.set_context(mode=ms.GRAPH_MODE)
losses = []
for alpha in sys.argv[1:]:
    ms.set_seed(0)
    cfg = petrun.load_config(CONFIG, ["load_checkpoint=''",
                                      f"model.model_config.pet_config.lora_alpha={alpha}"])
    net = petrun.build_model(cfg)
    params = list(net.trainable_params())
    for p in params:
        if "lora_b" in p.name:
            p.set_data(ms.Tensor(np.full(p.shape, 0.05, np.float32)))
    opt = build_optimizer(params, cfg.get("optimizer") or {}, np.full(4, 1e-4, np.float32))
    cell = TrainStep(net, opt, 1.0, None, 1.0, True)
    ids = ms.Tensor(np.arange(34, dtype=np.int32).reshape(2, 17) % 50 + 3)
    losses.append(float(cell(ids, ids)[0].asnumpy()))
print(json.dumps(losses))
"""


def _losses(alphas, cache_dir, cache="1", inline=False):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PETRUN_COMPILE_CACHE": cache, "PETRUN_CACHE_DIR": str(cache_dir)}
    env.pop("MS_COMPILER_CACHE_ENABLE", None)
    code = f"CONFIG = {str(root / CONFIG)!r}\n" + WORKER
    if inline:
        cmd = ["-c", code]
    else:
        script = Path(cache_dir) / "worker.py"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(code, encoding="utf-8")
        cmd = [str(script)]
    out = subprocess.run([sys.executable, *cmd, *map(str, alphas)], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_graph_in_a_process_never_loads_another_runs_graph(tmp_path):
    # MindSpore fixes the cache folder at a process's first cached compile and numbers later
    # graphs inside it, so before the fix run 2's second graph (alpha 64) loaded run 1's second
    # graph (alpha 32) and returned its loss. The oracle is the same build with the cache off.
    run1 = _losses([16, 32], tmp_path)
    run2 = _losses([16, 64], tmp_path)
    fresh = _losses([32, 64], tmp_path / "off", cache="0")
    assert fresh[0] != fresh[1]                      # alpha changes the loss: the test can tell
    assert run1 == [run2[0], fresh[0]]
    assert run2[1] == fresh[1]
    # The first graph of a run is cached and the next run reads it back (one folder, one graph).
    folders = [d for d in (tmp_path / "compile").iterdir()]
    assert len([d for d in folders if any(d.rglob("*.mindir"))]) == 1


def test_python_dash_c_runs_with_the_cache_switched_on(tmp_path):
    # MindSpore's cache reads the entry script; `python -c` has none (it raised
    # FileNotFoundError: '<cwd>/-c'), so petrun leaves the cache off there.
    assert _losses([16], tmp_path, inline=True) == _losses([16], tmp_path / "off", cache="0")
