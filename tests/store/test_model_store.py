"""The local model store through the real CLI (`petrun models add|list|show`) and its Python
side: sizes read from config.json, weights checked before an entry exists, atomic writes,
--overwrite, $PETRUN_MODEL_STORE relocation, and the errors that name the add command."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from petrun import store
from petrun.errors import UserError
from tests.conftest import run_cli
from tests.store.tiny_hf import H, HEADS, LAYERS, chatglm2_folder, gpt2_folder


@pytest.fixture
def store_env(tmp_path, monkeypatch):
    root = tmp_path / "store"
    monkeypatch.setenv(store.ENV, str(root))
    return {store.ENV: str(root)}


def _hf_params(folder, skip=()):
    """Parameters of an HF folder counted from its own file (buffers in `skip` left out)."""
    return sum(int(np.prod(a.shape)) for n, a in load_file(str(folder / "model.safetensors")).items()
               if n not in skip)


def test_add_list_show_gpt2(tmp_path, store_env):
    src = gpt2_folder(tmp_path / "gpt2-hf")
    r = run_cli("models", "add", "gpt2", "--from", src, env=store_env)
    assert r.returncode == 0, r.stdout + r.stderr
    entry_dir = tmp_path / "store" / "gpt2"
    assert sorted(p.name for p in entry_dir.iterdir()) == [
        "entry.json", "model.ckpt", "model.yaml", "tokenizer"]
    assert sorted(p.name for p in (entry_dir / "tokenizer").iterdir()) == ["merges.txt", "vocab.json"]

    r = run_cli("models", "list", "--json", env=store_env)
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)
    assert row == {"name": "gpt2", "family": "gpt2", "params": _hf_params(src),
                   "path": str(entry_dir)}
    r = run_cli("models", "list", env=store_env)
    assert "gpt2" in r.stdout and str(tmp_path / "store") in r.stdout

    mc = store.get("gpt2").model_yaml()["model"]["model_config"]
    hf = json.loads((src / "config.json").read_text())
    assert (mc["hidden_size"], mc["num_layers"], mc["num_heads"], mc["vocab_size"],
            mc["max_position_embeddings"]) == (hf["n_embd"], hf["n_layer"], hf["n_head"],
                                               hf["vocab_size"], hf["n_positions"])
    assert mc["hidden_act"] == "gelu" and mc["eos_token_id"] == mc["pad_token_id"] == 0


def test_add_chatglm2_checks_tokenizer_and_counts(tmp_path, store_env):
    src = chatglm2_folder(tmp_path / "chatglm2-6b")
    r = run_cli("models", "add", "glm2_6b", "--from", src, env=store_env)
    assert r.returncode == 0, r.stdout + r.stderr
    entry = store.get("glm2_6b")
    # the rotary inv_freq buffer is not a parameter
    assert entry.family == "glm2" and entry.params == _hf_params(
        src, skip=("transformer.rotary_pos_emb.inv_freq",))
    doc = entry.model_yaml()
    assert doc["processor"]["tokenizer"] == {"type": "ChatGLM2Tokenizer",
                                             "vocab_file": str(entry.path / "tokenizer" / "tokenizer.model")}
    mc = doc["model"]["model_config"]
    assert (mc["num_layers"], mc["hidden_size"], mc["num_attention_heads"],
            mc["multi_query_group_num"]) == (LAYERS, H, HEADS, 2)


def test_unknown_name_exits_2_with_the_add_command(tmp_path, store_env):
    r = run_cli("models", "show", "llama2_7b", env=store_env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "petrun models add llama2_7b --from" in r.stderr
    from petrun import Trainer
    with pytest.raises(UserError, match="petrun models add glm2_6b --from"):
        Trainer(task="text_generation", model="glm2_6b", pet_method="ptuning2")


def test_unknown_task_names_the_supported_ones():
    from petrun import Trainer
    with pytest.raises(UserError, match="task='image_classification'.*text_generation"):
        Trainer(task="image_classification", model="gpt2")
    with pytest.raises(UserError, match="not a MindFormers task"):
        Trainer(task="text_generaton", model="gpt2")


def test_a_failed_add_leaves_no_entry(tmp_path, store_env):
    src = gpt2_folder(tmp_path / "gpt2-hf")
    cfg = json.loads((src / "config.json").read_text())
    cfg["n_layer"] = 3   # the weights have 2 layers
    (src / "config.json").write_text(json.dumps(cfg))
    r = run_cli("models", "add", "gpt2", "--from", src, env=store_env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "key '--from'" in r.stderr and "missing" in r.stderr
    assert list((tmp_path / "store").iterdir()) == []   # no entry, no temporary folder
    # converts fine, but the position table has 64 rows where config.json says 32
    cfg.update(n_layer=2, n_positions=32)
    (src / "config.json").write_text(json.dumps(cfg))
    r = run_cli("models", "add", "gpt2", "--from", src, env=store_env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "other shapes" in r.stderr and "(64, 32), expected (32, 32)" in r.stderr
    assert list((tmp_path / "store").iterdir()) == []


def test_overwrite_replaces_only_when_asked(tmp_path, store_env):
    run_cli("models", "add", "gpt2", "--from", gpt2_folder(tmp_path / "a", seed=0), env=store_env)
    before = (tmp_path / "store" / "gpt2" / "model.ckpt").read_bytes()
    r = run_cli("models", "add", "gpt2", "--from", gpt2_folder(tmp_path / "b", seed=1),
                env=store_env)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert (tmp_path / "store" / "gpt2" / "model.ckpt").read_bytes() == before
    r = run_cli("models", "add", "gpt2", "--from", tmp_path / "b", "--overwrite", env=store_env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "store" / "gpt2" / "model.ckpt").read_bytes() != before
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["gpt2"]


def test_env_var_relocates_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv(store.ENV, str(tmp_path / "a"))
    store.add("gpt2", gpt2_folder(tmp_path / "hf"))
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    monkeypatch.setenv(store.ENV, str(tmp_path / "b"))
    entry = store.get("gpt2")
    doc = entry.model_yaml()
    assert doc["load_checkpoint"] == str(tmp_path / "b" / "gpt2" / "model.ckpt")
    tok = doc["processor"]["tokenizer"]
    for key in ("vocab_file", "merges_file"):
        assert tok[key].startswith(str(tmp_path / "b")) and (tmp_path / "b" / "gpt2" / "tokenizer"
                                                             / tok[key].rsplit("/", 1)[1]).is_file()
    assert [e.name for e in store.entries()] == ["gpt2"]
    monkeypatch.setenv(store.ENV, str(tmp_path / "a"))
    assert store.entries() == [] and not store.exists("gpt2")


def test_default_location_and_family_checks(tmp_path, monkeypatch):
    monkeypatch.delenv(store.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.root() == tmp_path / "xdg" / "petrun" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store.root() == tmp_path / "home" / ".cache" / "petrun" / "models"
    monkeypatch.setenv(store.ENV, str(tmp_path / "s"))
    with pytest.raises(UserError, match="the name 'glm2_6b' says glm2 but config.json describes a gpt2"):
        store.add("glm2_6b", gpt2_folder(tmp_path / "hf"))
    with pytest.raises(UserError, match="needs|--config"):
        (tmp_path / "w.ckpt").write_bytes(b"")
        store.add("mine", tmp_path / "w.ckpt")
    assert store.entries() == []


def test_model_name_picks_the_recipe_and_pet_defaults(tmp_path, store_env):
    """The seed's defaults: GPT-2 LoRA rank 8 / alpha 16 / dropout 0.1 on dense1-3; GLM2
    ptuning2 as run_glm2_6b_ptuning2.yaml (arch ChatGLM2WithPtuning2, pre_seq_len 128,
    prefix_projection False, projection_dim 128, dropout 0.0); glm2_6b_lora names the method."""
    from petrun import Trainer
    store.add("gpt2", gpt2_folder(tmp_path / "g"))
    store.add("glm2_6b", chatglm2_folder(tmp_path / "c"))
    ov = ["context.device_target=CPU"]
    t = Trainer(task="text_generation", model="gpt2", pet_method="lora", overrides=ov)
    assert t.config.get("model.model_config.pet_config") == {
        "pet_type": "lora", "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.1,
        "target_modules": ".*dense1|.*dense2|.*dense3"}
    # learned positions: the recipe's 1024 is cut to the table's 64 rows
    assert t.config.get("model.model_config.seq_length") == 64
    assert t.config.get("load_checkpoint") == str(tmp_path / "store" / "gpt2" / "model.ckpt")
    t = Trainer(task="text_generation", model="glm2_6b", pet_method="ptuning2", overrides=ov)
    assert t.config.get("model.arch.type") == "ChatGLM2WithPtuning2"
    assert t.config.get("model.model_config.pre_seq_len") == 128
    assert t.config.get("model.model_config.pet_config") == {
        "pet_type": "ptuning2", "pre_seq_len": 128, "prefix_projection": False,
        "projection_dim": 128, "dropout_prob": 0.0}
    assert t.config.get("train_dataset.tokenizer", {}).get("vocab_file", "") in (
        "", str(tmp_path / "store" / "glm2_6b" / "tokenizer" / "tokenizer.model"))
    t = Trainer(task="text_generation", model="glm2_6b_lora", overrides=ov)
    assert t.config.get("model.model_config.pet_config.lora_alpha") == 32
    with pytest.raises(UserError, match="names lora but pet_method='ptuning2'"):
        Trainer(task="text_generation", model="glm2_6b_lora", pet_method="ptuning2")
    with pytest.raises(UserError, match="train_dataset path does not exist"):
        Trainer(task="text_generation", model="gpt2", train_dataset=tmp_path / "nope")
