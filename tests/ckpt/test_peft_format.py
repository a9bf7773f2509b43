"""PEFT format without PEFT: export → import round trips are exact for every exportable method and
family, encoder-based methods come back as the prompt/prefix they compute, and import is strict
(missing, unused, misshaped tensors, scaling or length disagreements are errors). The CLI commands
run once. HF PEFT itself is exercised in test_peft_interop*.py."""
import json

import mindspore as ms
import numpy as np
import pytest
import yaml
from mindspore import Tensor
from safetensors.numpy import load_file, save_file

from petrun.api import build_model, load_checkpoint
from petrun.ckpt.io import save_params
from petrun.ckpt.peft_format import export_peft, import_peft
from petrun.errors import UserError
from tests.pet.pet_helpers import cpu_device

LLAMA = {"type": "LlamaConfig", "vocab_size": 128, "hidden_size": 32, "num_layers": 2,
         "num_heads": 4, "n_kv_heads": 2, "seq_length": 16, "multiple_of": 16,
         "compute_dtype": "float32", "param_init_type": "float32", "rotary_dtype": "float32"}
GLM2 = {"type": "ChatGLM2Config", "padded_vocab_size": 128, "hidden_size": 32, "num_layers": 2,
        "num_attention_heads": 4, "multi_query_group_num": 2, "kv_channels": 8,
        "ffn_hidden_size": 64, "seq_length": 16, "compute_dtype": "float32",
        "param_init_type": "float32"}
GPT2 = {"type": "GPT2Config", "vocab_size": 128, "hidden_size": 32, "num_layers": 2,
        "num_heads": 4, "seq_length": 16, "max_position_embeddings": 24,
        "compute_dtype": "float32", "param_init_type": "float32", "embedding_dropout_prob": 0.0,
        "hidden_dropout_rate": 0.0, "attention_dropout_rate": 0.0}
MODELS = {"llama2": ("LlamaForCausalLM", LLAMA), "glm2": ("ChatGLM2ForConditionalGeneration", GLM2),
          "gpt2": ("GPT2LMHeadModel", GPT2)}
LORA = {"llama2": ".*wq|.*wk|.*w2", "glm2": ".*query_key_value|.*dense$|.*dense_h_to_4h",
        "gpt2": ".*dense1|.*dense2|.*projection|.*mapping"}   # GPT-2's [in, out] layers too
IA3 = {"llama2": (".*wk|.*wv|.*w2", ".*w2"),
       "glm2": (".*query_key_value|.*dense_4h_to_h", ".*query_key_value"),
       "gpt2": (".*dense3|.*projection|.*mapping", ".*mapping")}


@pytest.fixture(autouse=True)
def pynative():
    cpu_device()
    ms.set_context(mode=ms.PYNATIVE_MODE)


def write_yaml(path, family, pet_config):
    arch, mc = MODELS[family]
    mc = {**mc, "pet_config": pet_config} if pet_config else dict(mc)
    path.write_text(yaml.safe_dump({"model": {"arch": {"type": arch}, "model_config": mc}}))
    return path


def trained_adapter(tmp, family, pet_config, seed=0):
    """A model with a random (non-identity) adapter, its YAML and its adapter-only .ckpt."""
    path = write_yaml(tmp / f"{pet_config['pet_type']}.yaml", family, pet_config)
    ms.set_seed(seed)
    net = build_model(str(path), device_target="CPU")
    rng = np.random.default_rng(seed)
    delta = [p for p in net.get_parameters() if "mindpet_delta_" in p.name]
    for p in delta:
        offset = 1.0 if p.name.endswith("ia3_l") else 0.0
        p.set_data(Tensor((offset + rng.normal(0, 0.2, p.shape)).astype(np.float32)))
    save_params(delta, tmp / "adapter.ckpt")
    return path, net, {p.name: p.asnumpy() for p in delta}


def read_ckpt(path):
    return {n: p.asnumpy() for n, p in ms.load_checkpoint(str(path)).items()}


def ids():
    return Tensor(np.random.default_rng(3).integers(1, 128, (2, 9)).astype(np.int32))


EXACT = [(f, {"pet_type": "lora", "lora_rank": 2, "lora_alpha": 6, "lora_dropout": 0.0,
              "target_modules": LORA[f]}) for f in MODELS] + \
        [(f, {"pet_type": "ia3", "target_modules": IA3[f][0], "feedforward_modules": IA3[f][1]})
         for f in MODELS] + \
        [(f, {"pet_type": "prompt_tuning", "num_virtual_tokens": 3}) for f in MODELS] + \
        [(f, {"pet_type": "ptuning2", "pre_seq_len": 3, "dropout_prob": 0.0}) for f in MODELS
         if f != "gpt2"]   # GPT-2's prefix methods are refused: test_gpt2_prefix_is_refused


@pytest.mark.parametrize("family, pet_config", EXACT,
                         ids=[f"{c['pet_type']}-{f}" for f, c in EXACT])
def test_export_then_import_gives_the_same_tensors(tmp_path, family, pet_config):
    path, _, original = trained_adapter(tmp_path, family, pet_config)
    result = export_peft(path, tmp_path / "adapter.ckpt", tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == result.peft_type and config["task_type"] == "CAUSAL_LM"
    assert list(config) == sorted(config)                     # PEFT writes keys sorted
    tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    if pet_config["pet_type"] in ("lora", "ia3"):
        assert all(k.startswith("base_model.model.") for k in tensors)
    else:
        assert list(tensors) == ["prompt_embeddings"]
    import_peft(path, tmp_path / "peft", tmp_path / "back.ckpt")
    back = read_ckpt(tmp_path / "back.ckpt")
    assert sorted(back) == sorted(original)
    for name, value in original.items():
        if pet_config["pet_type"] == "ptuning2":
            # prefix keys go out rotated by R(P) and come back by R(-P): float rounding only
            np.testing.assert_allclose(back[name], value, rtol=0, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_gpt2_prefix_is_refused(tmp_path):
    path, _, _ = trained_adapter(tmp_path, "gpt2", {"pet_type": "ptuning2", "pre_seq_len": 3,
                                                    "dropout_prob": 0.0})
    with pytest.raises(UserError, match="learned positions"):
        export_peft(path, tmp_path / "adapter.ckpt", tmp_path / "peft")


def test_llama_lora_keys_and_config_are_pefts(tmp_path):
    pet = {"pet_type": "lora", "lora_rank": 2, "lora_alpha": 6, "lora_dropout": 0.0,
           "target_modules": ".*wq|.*wk|.*w2"}
    path, _, original = trained_adapter(tmp_path, "llama2", pet)
    export_peft(path, tmp_path / "adapter.ckpt", tmp_path / "peft")
    tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    np.testing.assert_array_equal(
        tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"],
        original["model.layers.1.attention.wk.mindpet_delta_lora_a"])
    np.testing.assert_array_equal(
        tensors["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"],
        original["model.layers.0.feed_forward.w2.mindpet_delta_lora_b"])
    assert len(tensors) == 2 * 3 * 2
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["lora_alpha"] == 6 and config["fan_in_fan_out"] is False
    assert sorted(config["target_modules"]) == ["down_proj", "k_proj", "q_proj"]


def test_gpt2_lora_exports_one_block_diagonal_c_attn(tmp_path):
    pet = {"pet_type": "lora", "lora_rank": 2, "lora_alpha": 6, "lora_dropout": 0.0,
           "target_modules": ".*dense1|.*dense3"}
    path, _, original = trained_adapter(tmp_path, "gpt2", pet)
    export_peft(path, tmp_path / "adapter.ckpt", tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    # Two thirds of c_attn, rank 2 each: rank 4 and alpha 12 keep the scaling 6/2.
    assert (config["r"], config["lora_alpha"], config["fan_in_fan_out"]) == (4, 12, True)
    assert config["target_modules"] == ["c_attn"]
    t = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    a = t["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"]
    b = t["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    assert a.shape == (4, 32) and b.shape == (96, 4)
    p = "backbone.blocks.0.attention."
    delta = b @ a
    np.testing.assert_allclose(delta[:32], original[p + "dense1.mindpet_delta_lora_b"]
                               @ original[p + "dense1.mindpet_delta_lora_a"], atol=1e-6)
    assert not delta[32:64].any()                               # the key third is untouched
    np.testing.assert_allclose(delta[64:], original[p + "dense3.mindpet_delta_lora_b"]
                               @ original[p + "dense3.mindpet_delta_lora_a"], atol=1e-6)


@pytest.mark.parametrize("family, trained, imported", [
    ("llama2", {"pet_type": "ptuning", "num_virtual_tokens": 3, "encoder_hidden_size": 8},
     {"pet_type": "prompt_tuning", "num_virtual_tokens": 3}),
    ("gpt2", {"pet_type": "ptuning", "num_virtual_tokens": 3, "encoder_hidden_size": 8,
              "encoder_reparameterization_type": "LSTM"},
     {"pet_type": "prompt_tuning", "num_virtual_tokens": 3}),
    ("glm2", {"pet_type": "prefixtuning", "prefix_token_num": 3, "mid_dim": 8,
              "dropout_rate": 0.0},
     {"pet_type": "ptuning2", "pre_seq_len": 3, "dropout_prob": 0.0}),
    ("llama2", {"pet_type": "ptuning2", "pre_seq_len": 3, "prefix_projection": True,
                "projection_dim": 8, "dropout_prob": 0.0},
     {"pet_type": "ptuning2", "pre_seq_len": 3, "dropout_prob": 0.0}),
], ids=["ptuning-mlp", "ptuning-lstm", "prefixtuning", "ptuning2-projection"])
def test_encoder_methods_come_back_as_what_they_compute(tmp_path, family, trained, imported):
    """PEFT keeps the encoder's output: imported as a plain prompt / prefix, the model computes
    the same logits as with the encoder."""
    path, net, _ = trained_adapter(tmp_path, family, trained)
    net.set_train(False)
    base = tmp_path / "base.ckpt"
    save_params([p for p in net.get_parameters() if "mindpet_delta_" not in p.name], base)
    want = net(ids()).asnumpy()
    export_peft(path, tmp_path / "adapter.ckpt", tmp_path / "peft")
    with pytest.raises(UserError) as e:      # the encoder cannot be rebuilt from its output
        import_peft(path, tmp_path / "peft", tmp_path / "x.ckpt")
    assert "pet_type" in e.value.fix
    plain = write_yaml(tmp_path / "plain.yaml", family, imported)
    import_peft(plain, tmp_path / "peft", tmp_path / "back.ckpt")
    again = build_model(str(plain), device_target="CPU")
    load_checkpoint(again, base)
    load_checkpoint(again, tmp_path / "back.ckpt")
    again.set_train(False)
    np.testing.assert_allclose(again(ids()).asnumpy(), want, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Strict import


LLAMA_LORA = {"pet_type": "lora", "lora_rank": 2, "lora_alpha": 4, "lora_dropout": 0.0,
              "target_modules": ".*wq|.*wv"}


@pytest.fixture
def exported(tmp_path):
    path, _, _ = trained_adapter(tmp_path, "llama2", LLAMA_LORA)
    export_peft(path, tmp_path / "adapter.ckpt", tmp_path / "peft")
    return path, tmp_path / "peft"


def _edit(folder, tensors=None, config=None):
    if tensors is not None:
        save_file(tensors, str(folder / "adapter_model.safetensors"))
    if config is not None:
        (folder / "adapter_config.json").write_text(json.dumps(config))


def test_import_rejects_a_missing_tensor(exported, tmp_path):
    path, folder = exported
    t = load_file(str(folder / "adapter_model.safetensors"))
    del t["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]
    _edit(folder, t)
    with pytest.raises(UserError, match=r"layers\.1\.self_attn\.v_proj\.lora_B\.weight is missing"):
        import_peft(path, folder, tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()


def test_import_rejects_an_adapted_layer_the_config_does_not_target(exported, tmp_path):
    path, folder = exported
    t = load_file(str(folder / "adapter_model.safetensors"))
    t["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"] = np.ones((2, 32), np.float32)
    t["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"] = np.ones((16, 2), np.float32)
    _edit(folder, t)
    with pytest.raises(UserError, match="k_proj") as e:
        import_peft(path, folder, tmp_path / "x.ckpt")
    assert e.value.key.endswith("target_modules")


def test_import_rejects_a_wrong_shape_and_a_wrong_scaling(exported, tmp_path):
    path, folder = exported
    rank4 = write_yaml(tmp_path / "rank4.yaml", "llama2", {**LLAMA_LORA, "lora_rank": 4,
                                                           "lora_alpha": 8})
    with pytest.raises(UserError, match="shape"):
        import_peft(rank4, folder, tmp_path / "x.ckpt")
    alpha = write_yaml(tmp_path / "alpha.yaml", "llama2", {**LLAMA_LORA, "lora_alpha": 16})
    with pytest.raises(UserError, match="scaling") as e:
        import_peft(alpha, folder, tmp_path / "x.ckpt")
    assert "lora_alpha: 4" in e.value.fix
    config = json.loads((folder / "adapter_config.json").read_text())
    _edit(folder, config={**config, "use_dora": True})
    with pytest.raises(UserError, match="use_dora"):
        import_peft(path, folder, tmp_path / "x.ckpt")


def test_import_rejects_a_prompt_of_another_length(tmp_path):
    path, _, _ = trained_adapter(tmp_path, "llama2", {"pet_type": "prompt_tuning",
                                                      "num_virtual_tokens": 3})
    export_peft(path, tmp_path / "adapter.ckpt", tmp_path / "peft")
    four = write_yaml(tmp_path / "four.yaml", "llama2", {"pet_type": "prompt_tuning",
                                                         "num_virtual_tokens": 4})
    with pytest.raises(UserError, match=r"\(3, 32\).*\(4, 32\)"):
        import_peft(four, tmp_path / "peft", tmp_path / "x.ckpt")


def test_adapters_have_no_peft_format(tmp_path):
    path, _, _ = trained_adapter(tmp_path, "llama2", {"pet_type": "adapter",
                                                      "target_modules": ".*wo"})
    with pytest.raises(UserError, match="no PEFT format"):
        export_peft(path, tmp_path / "adapter.ckpt", tmp_path / "peft")


def test_export_checks_the_adapter_against_the_config(tmp_path):
    path, _, _ = trained_adapter(tmp_path, "llama2", LLAMA_LORA)
    wider = write_yaml(tmp_path / "wider.yaml", "llama2", {**LLAMA_LORA,
                                                           "target_modules": ".*wq|.*wv|.*wo"})
    with pytest.raises(UserError, match="missing") as e:
        export_peft(wider, tmp_path / "adapter.ckpt", tmp_path / "peft")
    assert e.value.key == "--adapter"


def test_cli_export_and_import(tmp_path, cli):
    path, _, original = trained_adapter(tmp_path, "llama2", LLAMA_LORA)
    r = cli("ckpt", "export-peft", "--config", path, "--adapter", tmp_path / "adapter.ckpt",
            "--dst", tmp_path / "peft", "--base-model", "hf_llama/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "LORA" in r.stdout and (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "hf_llama/"
    r = cli("ckpt", "import-peft", "--config", path, "--src", tmp_path / "peft",
            "--dst", tmp_path / "back.ckpt")
    assert r.returncode == 0, r.stdout + r.stderr
    back = read_ckpt(tmp_path / "back.ckpt")
    assert all(np.array_equal(back[n], v) for n, v in original.items())
    r = cli("ckpt", "import-peft", "--config", path, "--src", tmp_path, "--dst", tmp_path / "y.ckpt")
    assert r.returncode == 2 and "adapter_config.json" in r.stderr and "Traceback" not in r.stderr


def test_cli_export_takes_an_adapter_folder_and_names_adapter_in_errors(tmp_path, cli):
    from tests.ckpt.test_merge import leftovers, run_folder
    path, net, original = trained_adapter(tmp_path, "llama2", LLAMA_LORA)
    folder = run_folder(tmp_path, net)
    r = cli("ckpt", "export-peft", "--config", path, "--adapter", f"{folder}/", "--dst", tmp_path / "peft")
    assert r.returncode == 0, r.stdout + r.stderr
    export_peft(path, tmp_path / "adapter.ckpt", tmp_path / "from_file")
    got = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    want = load_file(str(tmp_path / "from_file" / "adapter_model.safetensors"))
    assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
    r = cli("ckpt", "export-peft", "--config", path, "--adapter", tmp_path / "nope", "--dst", tmp_path / "p2")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "key '--adapter': checkpoint path does not exist" in r.stderr
    assert "Fix: check the path" in r.stderr and "--src" not in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "p2").exists() and not leftovers(tmp_path)


def test_cli_import_refuses_a_bad_adapter_config_and_an_existing_dst(tmp_path, cli):
    from tests.ckpt.test_merge import leftovers
    path, _, original = trained_adapter(tmp_path, "llama2", LLAMA_LORA)
    export_peft(path, tmp_path / "adapter.ckpt", tmp_path / "peft")
    good = (tmp_path / "peft" / "adapter_config.json").read_text()
    for text, says in (("{not json", "not valid JSON"), ("[1, 2]", "holds a JSON list, not an object")):
        (tmp_path / "peft" / "adapter_config.json").write_text(text)
        r = cli("ckpt", "import-peft", "--config", path, "--src", tmp_path / "peft",
                "--dst", tmp_path / "x.ckpt")
        assert r.returncode == 2, r.stdout + r.stderr
        assert "adapter_config.json: key '--src': " + says in r.stderr
        assert "Fix: " in r.stderr and "save_pretrained" in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "x.ckpt").exists()
    (tmp_path / "peft" / "adapter_config.json").write_text(good)
    dst = tmp_path / "back.ckpt"
    dst.write_bytes(b"an earlier import")
    r = cli("ckpt", "import-peft", "--config", path, "--src", tmp_path / "peft", "--dst", dst)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "back.ckpt: key '--dst': the output already exists" in r.stderr
    assert "Fix: pass --overwrite or choose another --dst" in r.stderr and "Traceback" not in r.stderr
    assert dst.read_bytes() == b"an earlier import" and not leftovers(tmp_path)
    import_peft(path, tmp_path / "peft", dst, overwrite=True)
    back = read_ckpt(dst)
    assert all(np.array_equal(back[n], v) for n, v in original.items())
