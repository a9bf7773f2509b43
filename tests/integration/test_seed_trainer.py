"""Issue 14's acceptance: the seed documents' two Trainer snippets run verbatim (only the data
paths substituted and the step cap added through the documented `overrides`), in a fresh Python
process, against models put into a store by the real `petrun models add` from tiny Hugging Face
folders made here (GPT-2 and ChatGLM2 layouts). They write adapter checkpoints holding exactly
the PET parameters of the seed's pet_config."""
import json
import random
import subprocess
import sys

import pytest

from petrun.ckpt.index import read_index
from tests.conftest import ROOT, run_cli
from tests.store.tiny_hf import GLM_GROUPS, GLM_KV, H, LAYERS, chatglm2_folder, gpt2_folder

pytestmark = pytest.mark.slow

GPT2_SEED = '''
from petrun import Trainer

gpt2_trainer = Trainer(
    task='text_generation',
    model='gpt2',
    pet_method='lora',
    train_dataset="{data}",
    overrides=["runner_config.stop_step=2"],
)

gpt2_trainer.finetune()
'''

GLM2_SEED = '''
from petrun import Trainer

trainer = Trainer(
    task='text_generation',
    model='glm2_6b',
    pet_method='ptuning2',
    train_dataset="{data}",
    overrides=["runner_config.stop_step=2"],
)

trainer.finetune(finetune_checkpoint="glm2_6b")
'''

# MindFormers' evaluate/predict after the finetune; True = this output_dir's newest adapter
GPT2_AFTER = '''
import json
from petrun import Trainer

trainer = Trainer(task='text_generation', model='gpt2', pet_method='lora', eval_dataset="{data}",
                  overrides=["model.model_config.do_sample=False"])
out = trainer.predict(input_data="the quick brown", predict_checkpoint=True, max_length=24)
print("PREDICT", json.dumps([len(r["ids"]) for r in out["results"]]))
print("EVAL", json.dumps(trainer.evaluate(eval_checkpoint=True)))
'''

_WORDS = ("the quick brown fox jumps over the lazy dog game development began in japan and "
          "was praised by critics").split()


def _wikitext(folder):
    """wikitext-2's layout: ' = Title = ' headings, ' = = Section = = ', paragraphs."""
    rng = random.Random(0)
    lines = [" = Valkyria Chronicles III = ", ""]
    for s in range(12):
        lines += [f" = = Section {s} = = ", ""]
        lines += [" " + " ".join(rng.choice(_WORDS) for _ in range(60)) + " . " for _ in range(3)]
        lines.append("")
    folder.mkdir(parents=True)
    (folder / "wiki.train.tokens").write_text("\n".join(lines), encoding="utf-8")
    return folder


def _advertisegen(path):
    """AdvertiseGen's train.json: JSON lines of content/summary."""
    rng = random.Random(1)
    path.parent.mkdir(parents=True)
    rows = [{"content": "类型#裙*颜色#红色 " + " ".join(rng.choice(_WORDS) for _ in range(8)),
             "summary": " ".join(rng.choice(_WORDS) for _ in range(12))} for _ in range(24)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _run_seed(code, cwd, env):
    script = cwd / "seed.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**env, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def store_env(tmp_path):
    import os
    return {**os.environ, "PETRUN_MODEL_STORE": str(tmp_path / "store"),
            "PETRUN_CACHE_DIR": str(tmp_path / "cache")}


def _adapter(cwd):
    files = sorted((cwd / "output" / "checkpoint" / "rank_0").glob("*.ckpt"))
    assert len(files) == 1, files
    index = read_index(files[0])
    # besides the adapter, only MindFormers' step counters (no base weight)
    assert {n for n in index if "mindpet_delta_" not in n} <= {"epoch_num", "step_num"}
    return {n: tuple(i.shape) for n, i in index.items() if "mindpet_delta_" in n}


def test_gpt2_lora_seed_snippet(tmp_path, store_env):
    r = run_cli("models", "add", "gpt2", "--from", gpt2_folder(tmp_path / "gpt2-hf"), env=store_env)
    assert r.returncode == 0, r.stderr
    data = _wikitext(tmp_path / "wikitext-2" / "train")
    work = tmp_path / "work"
    work.mkdir()
    r = _run_seed(GPT2_SEED.format(data=data), work, store_env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert f"loaded 36 tensors from {tmp_path / 'store' / 'gpt2' / 'model.ckpt'}" in r.stdout
    assert "2 optimizer steps" in r.stdout
    # rank 8 LoRA on dense1, dense2 and dense3 of both layers; nothing else is saved
    want = {}
    for i in range(LAYERS):
        for d in ("dense1", "dense2", "dense3"):
            p = f"backbone.blocks.{i}.attention.{d}.mindpet_delta_lora_"
            want[p + "a"], want[p + "b"] = (8, H), (H, 8)
    assert _adapter(work) == want

    r = _run_seed(GPT2_AFTER.format(data=data), work, store_env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("loaded 12 lora tensors from output/checkpoint/rank_0") == 2
    line = lambda tag: json.loads(next(x for x in r.stdout.splitlines() if x.startswith(tag))[len(tag):])
    [new_tokens] = line("PREDICT ")
    assert 0 < new_tokens <= 24
    result = line("EVAL ")
    assert result["samples"] > 0 and abs(result["perplexity"] - 2.718281828 ** result["loss"]) < 1e-6 * result["perplexity"]


def test_glm2_ptuning2_seed_snippet(tmp_path, store_env):
    r = run_cli("models", "add", "glm2_6b", "--from", chatglm2_folder(tmp_path / "chatglm2-6b"),
                env=store_env)
    assert r.returncode == 0, r.stderr
    data = _advertisegen(tmp_path / "AdvertiseGen" / "train.json")
    work = tmp_path / "work"
    work.mkdir()
    r = _run_seed(GLM2_SEED.format(data=data), work, store_env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert f"loaded 17 tensors from {tmp_path / 'store' / 'glm2_6b' / 'model.ckpt'}" in r.stdout
    # MindFormers' tokenization: 64 source + 128 target + 1 = seq_length 193
    assert "8 × 193 tokens" in r.stdout
    # pre_seq_len 128, no projection: one prefix table of key+value per layer and kv group
    assert _adapter(work) == {
        "prefix_encoder.mindpet_delta_ptuning2_embedding.embedding_table":
            (128, LAYERS * 2 * GLM_KV * GLM_GROUPS)}
