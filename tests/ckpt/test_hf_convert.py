"""petrun.ckpt.hf and `petrun ckpt convert` without torch: HF-named numpy checkpoints of each
family (both GLM2 layouts, GPT-2 with and without the transformer. prefix) convert into files that
load strictly into petrun's models; errors name the tensors; memory stays near one tensor."""
import json
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file, save_file

from petrun.ckpt import hf
from petrun.ckpt.hf import Rule, convert_hf_to_ms, convert_ms_to_hf
from petrun.errors import UserError
from tests.conftest import ROOT, run_cli

RNG = np.random.default_rng(0)
H, LAYERS, VOCAB = 32, 2, 97

MODELS = {
    "llama2": ("LlamaForCausalLM", {"type": "LlamaConfig", "hidden_size": H, "num_layers": LAYERS,
                                    "num_heads": 4, "n_kv_heads": 2, "intermediate_size": 48,
                                    "vocab_size": VOCAB, "seq_length": 16,
                                    "compute_dtype": "float32", "param_init_type": "float32"}),
    "glm2": ("ChatGLM2ForConditionalGeneration",
             {"type": "ChatGLM2Config", "hidden_size": H, "num_layers": LAYERS,
              "num_attention_heads": 4, "multi_query_group_num": 2, "kv_channels": 8,
              "ffn_hidden_size": 40, "padded_vocab_size": VOCAB, "seq_length": 16,
              "compute_dtype": "float32", "param_init_type": "float32"}),
    "gpt2": ("GPT2LMHeadModel", {"type": "GPT2Config", "hidden_size": H, "num_layers": LAYERS,
                                 "num_heads": 4, "vocab_size": VOCAB, "seq_length": 16,
                                 "compute_dtype": "float32"}),
}


def _r(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def hf_llama():
    t = {"model.embed_tokens.weight": _r(VOCAB, H), "model.norm.weight": _r(H),
         "lm_head.weight": _r(VOCAB, H)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t.update({p + "self_attn.q_proj.weight": _r(H, H), p + "self_attn.k_proj.weight": _r(16, H),
                  p + "self_attn.v_proj.weight": _r(16, H), p + "self_attn.o_proj.weight": _r(H, H),
                  p + "mlp.gate_proj.weight": _r(48, H), p + "mlp.up_proj.weight": _r(48, H),
                  p + "mlp.down_proj.weight": _r(H, 48), p + "input_layernorm.weight": _r(H),
                  p + "post_attention_layernorm.weight": _r(H)})
    return t, {"model_type": "llama", "num_hidden_layers": LAYERS}


def hf_glm():
    t = {"model.embed_tokens.weight": _r(VOCAB, H), "model.norm.weight": _r(H),
         "lm_head.weight": _r(VOCAB, H)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for x, rows in (("q", 32), ("k", 16), ("v", 16)):
            t[f"{p}self_attn.{x}_proj.weight"] = _r(rows, H)
            t[f"{p}self_attn.{x}_proj.bias"] = _r(rows)
        t.update({p + "self_attn.o_proj.weight": _r(H, H), p + "mlp.gate_up_proj.weight": _r(80, H),
                  p + "mlp.down_proj.weight": _r(H, 40), p + "input_layernorm.weight": _r(H),
                  p + "post_attention_layernorm.weight": _r(H)})
    return t, {"model_type": "glm", "num_hidden_layers": LAYERS}


def hf_chatglm():
    """THUDM's remote-code layout: MindFormers' names but for the embedding, plus a rope buffer."""
    t = {"transformer.embedding.word_embeddings.weight": _r(VOCAB, H),
         "transformer.rotary_pos_emb.inv_freq": _r(2),
         "transformer.encoder.final_layernorm.weight": _r(H),
         "transformer.output_layer.weight": _r(VOCAB, H)}
    for i in range(LAYERS):
        p = f"transformer.encoder.layers.{i}."
        t.update({p + "input_layernorm.weight": _r(H),
                  p + "self_attention.query_key_value.weight": _r(64, H),
                  p + "self_attention.query_key_value.bias": _r(64),
                  p + "self_attention.dense.weight": _r(H, H),
                  p + "post_attention_layernorm.weight": _r(H),
                  p + "mlp.dense_h_to_4h.weight": _r(80, H), p + "mlp.dense_4h_to_h.weight": _r(H, 40)})
    return t, {"model_type": "chatglm", "num_layers": LAYERS}


def hf_gpt2(prefix="transformer.", legacy_buffers=False):
    t = {f"{prefix}wte.weight": _r(VOCAB, H), f"{prefix}wpe.weight": _r(16, H),
         f"{prefix}ln_f.weight": _r(H), f"{prefix}ln_f.bias": _r(H)}
    for i in range(LAYERS):
        p = f"{prefix}h.{i}."
        t.update({p + "ln_1.weight": _r(H), p + "ln_1.bias": _r(H), p + "ln_2.weight": _r(H),
                  p + "ln_2.bias": _r(H), p + "attn.c_attn.weight": _r(H, 3 * H),
                  p + "attn.c_attn.bias": _r(3 * H), p + "attn.c_proj.weight": _r(H, H),
                  p + "attn.c_proj.bias": _r(H), p + "mlp.c_fc.weight": _r(H, 4 * H),
                  p + "mlp.c_fc.bias": _r(4 * H), p + "mlp.c_proj.weight": _r(4 * H, H),
                  p + "mlp.c_proj.bias": _r(H)})
        if legacy_buffers:
            t[p + "attn.bias"] = np.ones((1, 1, 16, 16), np.float32)
            t[p + "attn.masked_bias"] = np.array(-1e4, np.float32)
    return t, {"model_type": "gpt2", "n_layer": LAYERS}


def save_hf(folder, tensors, config):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def petrun_yaml(path, family):
    arch, mc = MODELS[family]
    path.write_text(yaml.safe_dump({"model": {"arch": {"type": arch}, "model_config": mc}}))
    return path


def load_strict(family, yaml_path, ckpt):
    from petrun.api import build_model, load_checkpoint
    net = build_model(str(yaml_path), device_target="CPU")
    result = load_checkpoint(net, ckpt, strict=True)
    assert not result["missing"]
    return net


@pytest.mark.parametrize("family,make", [
    ("llama2", hf_llama), ("glm2", hf_glm), ("glm2", hf_chatglm), ("gpt2", hf_gpt2),
    ("gpt2", lambda: hf_gpt2(prefix="", legacy_buffers=True))],
    ids=["llama2", "glm2-transformers", "glm2-thudm", "gpt2", "gpt2-openai-names"])
def test_converted_checkpoint_loads_strictly(tmp_path, family, make):
    tensors, config = make()
    src = save_hf(tmp_path / "hf", tensors, config)
    result = convert_hf_to_ms(family, src, tmp_path / "out.ckpt")
    assert result.dst == tmp_path / "out.ckpt" and result.bytes_written > 0
    net = load_strict(family, petrun_yaml(tmp_path / "m.yaml", family), tmp_path / "out.ckpt")
    assert result.tensors == len(list(net.get_parameters()))
    assert all("inv_freq" in d or "attn." in d for d in result.dropped)


def test_gpt2_c_attn_split_and_transpose(tmp_path):
    tensors, config = hf_gpt2()
    convert_hf_to_ms("gpt2", save_hf(tmp_path / "hf", tensors, config), tmp_path / "o.ckpt")
    ckpt = ms.load_checkpoint(str(tmp_path / "o.ckpt"))
    w = tensors["transformer.h.0.attn.c_attn.weight"]
    for j in range(3):
        np.testing.assert_array_equal(ckpt[f"backbone.blocks.0.attention.dense{j + 1}.weight"]
                                      .asnumpy(), w[:, j * H:(j + 1) * H].T)
    np.testing.assert_array_equal(ckpt["backbone.blocks.0.output.projection.weight"].asnumpy(),
                                  tensors["transformer.h.0.mlp.c_proj.weight"])


@pytest.mark.parametrize("family,make", [("llama2", hf_llama), ("glm2", hf_glm),
                                         ("gpt2", hf_gpt2)])
def test_round_trip_restores_every_tensor(tmp_path, family, make):
    tensors, config = make()
    src = save_hf(tmp_path / "hf", tensors, config)
    convert_hf_to_ms(family, src, tmp_path / "a.ckpt")
    convert_ms_to_hf(family, tmp_path / "a.ckpt", tmp_path / "back",
                     petrun_yaml(tmp_path / "m.yaml", family))
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(back) == sorted(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(back[name], value)
    written = json.loads((tmp_path / "back" / "config.json").read_text())
    assert written["model_type"] == config["model_type"]
    # And forward again: the same bytes as the first conversion.
    convert_hf_to_ms(family, tmp_path / "back", tmp_path / "b.ckpt")
    assert (tmp_path / "a.ckpt").read_bytes() == (tmp_path / "b.ckpt").read_bytes()


def test_dtype_option_casts_floats(tmp_path):
    tensors, config = hf_llama()
    src = save_hf(tmp_path / "hf", tensors, config)
    convert_hf_to_ms("llama2", src, tmp_path / "h.ckpt", dtype="fp16")
    ckpt = ms.load_checkpoint(str(tmp_path / "h.ckpt"))
    assert {v.dtype for v in ckpt.values()} == {ms.float16}
    convert_hf_to_ms("llama2", src, tmp_path / "b.ckpt", dtype="bf16")
    assert {v.dtype for v in ms.load_checkpoint(str(tmp_path / "b.ckpt")).values()} == {ms.bfloat16}
    with pytest.raises(UserError) as err:
        convert_hf_to_ms("llama2", src, tmp_path / "x.ckpt", dtype="fp8")
    assert err.value.key == "--dtype"


def test_rule_ops_invert_exactly():
    a = _r(8, 12)
    for rule in (Rule(("x",), ("q", "k", "v"), "split_last_t"),
                 Rule(("q", "k", "v"), ("x",), "concat0", sizes=(4, 2, 2))):
        src = [a] if len(rule.sources) == 1 else np.split(a, [4, 6])
        out = hf._APPLY[rule.op](src, rule)
        back = hf._APPLY[rule.inverse().op](out, rule.inverse())
        for x, y in zip(src, back):
            np.testing.assert_array_equal(x, y)


def test_missing_and_unknown_tensors_are_named(tmp_path):
    tensors, config = hf_llama()
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.mlp.extra.weight"] = _r(2)
    src = save_hf(tmp_path / "hf", tensors, config)
    with pytest.raises(UserError) as err:
        convert_hf_to_ms("llama2", src, tmp_path / "o.ckpt")
    text = str(err.value)
    assert "model.layers.1.mlp.up_proj.weight" in text and "model.layers.0.mlp.extra.weight" in text
    assert not (tmp_path / "o.ckpt").exists() and not list(tmp_path.glob(".*partial*"))


def test_config_json_layer_count_catches_a_missing_layer(tmp_path):
    tensors, config = hf_gpt2()
    config["n_layer"] = 3
    with pytest.raises(UserError, match=r"transformer\.h\.2\."):
        convert_hf_to_ms("gpt2", save_hf(tmp_path / "hf", tensors, config), tmp_path / "o.ckpt")


def test_wrong_family_is_caught_from_config_json(tmp_path):
    tensors, config = hf_gpt2()
    with pytest.raises(UserError) as err:
        convert_hf_to_ms("llama2", save_hf(tmp_path / "hf", tensors, config), tmp_path / "o.ckpt")
    assert err.value.key == "--model" and "--model gpt2" in err.value.fix


def test_reverse_needs_a_matching_config_and_no_adapters(tmp_path):
    tensors, config = hf_gpt2()
    convert_hf_to_ms("gpt2", save_hf(tmp_path / "hf", tensors, config), tmp_path / "a.ckpt")
    with pytest.raises(UserError) as err:
        convert_ms_to_hf("gpt2", tmp_path / "a.ckpt", tmp_path / "back", None)
    assert err.value.key == "--config"
    with pytest.raises(UserError) as err:
        convert_ms_to_hf("gpt2", tmp_path / "a.ckpt", tmp_path / "back",
                         petrun_yaml(tmp_path / "l.yaml", "llama2"))
    assert err.value.key == "model.arch.type"
    lora = {**{k: v.asnumpy() for k, v in ms.load_checkpoint(str(tmp_path / "a.ckpt")).items()},
            "backbone.blocks.0.attention.dense1.mindpet_delta_lora_a": _r(2, H)}
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in lora.items()],
                       str(tmp_path / "lora.ckpt"), append_dict={"step_num": 3})
    with pytest.raises(UserError, match="adapter"):
        convert_ms_to_hf("gpt2", tmp_path / "lora.ckpt", tmp_path / "back",
                         petrun_yaml(tmp_path / "g.yaml", "gpt2"))


def test_cli_reports_user_errors_without_traceback(tmp_path):
    tensors, config = hf_llama()
    del tensors["model.norm.weight"]
    src = save_hf(tmp_path / "hf", tensors, config)
    r = run_cli("ckpt", "convert", "--model", "llama2", "--src", src, "--dst", tmp_path / "o.ckpt")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "model.norm.weight" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("ckpt", "convert", "--model", "bert", "--src", src, "--dst", tmp_path / "o.ckpt")
    assert r.returncode == 2 and "llama2, glm2, gpt2" in r.stderr
    r = run_cli("ckpt", "convert", "--model", "llama2", "--src", src, "--dst", tmp_path / "o.bin")
    assert r.returncode == 2 and "--dst" in r.stderr


_PEAK = """
import resource, sys
from petrun.ckpt.hf import convert_hf_to_ms
convert_hf_to_ms("gpt2", sys.argv[1], sys.argv[2], dtype=sys.argv[3] if len(sys.argv) > 3 else None)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_kib(*args):
    done = subprocess.run([sys.executable, "-c", _PEAK, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_conversion_streams_tensor_by_tensor(tmp_path):
    """A 48 MiB model of 12 equal 4 MiB tensors: peak memory grows by a few tensors, not 2×."""
    h, layers = 512, 4
    t = {"transformer.wte.weight": _r(2048, h), "transformer.wpe.weight": _r(2048, h),
         "transformer.ln_f.weight": _r(h), "transformer.ln_f.bias": _r(h)}
    for i in range(layers):
        p = f"transformer.h.{i}."
        t.update({p + "attn.c_attn.weight": _r(h, 3 * h), p + "attn.c_attn.bias": _r(3 * h),
                  p + "attn.c_proj.weight": _r(h, h), p + "attn.c_proj.bias": _r(h),
                  p + "mlp.c_fc.weight": _r(h, 4 * h), p + "mlp.c_fc.bias": _r(4 * h),
                  p + "mlp.c_proj.weight": _r(4 * h, h), p + "mlp.c_proj.bias": _r(h)})
        for n in ("ln_1", "ln_2"):
            t.update({f"{p}{n}.weight": _r(h), f"{p}{n}.bias": _r(h)})
    model_mib = sum(v.nbytes for v in t.values()) / 2 ** 20
    big = save_hf(tmp_path / "big", t, {"model_type": "gpt2", "n_layer": layers})
    del t
    small_t, small_cfg = hf_gpt2()
    small = save_hf(tmp_path / "small", small_t, small_cfg)
    baseline = _peak_kib(small, tmp_path / "s.ckpt")
    for dtype in (None, "bf16"):
        growth_mib = (_peak_kib(big, tmp_path / f"b_{dtype}.ckpt", *([dtype] if dtype else []))
                      - baseline) / 1024
        # The largest tensor is 8 MiB (c_fc, c_attn 6 MiB → three 2 MiB parts).
        assert growth_mib < 0.5 * model_mib, (dtype, growth_mib, model_mib)


def test_reverse_refuses_a_folder_with_other_weights(tmp_path):
    tensors, config = hf_gpt2()
    convert_hf_to_ms("gpt2", save_hf(tmp_path / "hf", tensors, config), tmp_path / "a.ckpt")
    (tmp_path / "back").mkdir()
    (tmp_path / "back" / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(UserError) as err:
        convert_ms_to_hf("gpt2", tmp_path / "a.ckpt", tmp_path / "back",
                         petrun_yaml(tmp_path / "g.yaml", "gpt2"))
    assert err.value.key == "--dst" and "index.json" in str(err.value)


def _leftovers(folder):
    from petrun.atomic import is_leftover_tmp
    return [p.name for p in folder.rglob("*") if is_leftover_tmp(p.name) or p.suffix == ".tmp"]


def test_cli_convert_replaces_an_existing_dst_only_with_overwrite(tmp_path):
    tensors, config = hf_gpt2()
    src = save_hf(tmp_path / "hf", tensors, config)
    dst = tmp_path / "o.ckpt"
    dst.write_bytes(b"an earlier conversion")
    r = run_cli("ckpt", "convert", "--model", "gpt2", "--src", src, "--dst", dst)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "key '--dst': the output already exists" in r.stderr
    assert "Fix: pass --overwrite or choose another --dst" in r.stderr and "Traceback" not in r.stderr
    assert dst.read_bytes() == b"an earlier conversion" and not _leftovers(tmp_path)
    r = run_cli("ckpt", "convert", "--model", "gpt2", "--src", src, "--dst", dst, "--overwrite")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "transformer.wte.weight" not in ms.load_checkpoint(str(dst))   # MindFormers' names now
    # --reverse: the folder's model.safetensors / config.json are the output
    yaml_path = petrun_yaml(tmp_path / "g.yaml", "gpt2")
    back = tmp_path / "back"
    back.mkdir()
    (back / "config.json").write_text("{}")
    r = run_cli("ckpt", "convert", "--model", "gpt2", "--src", dst, "--dst", back, "--reverse",
                "--config", yaml_path)
    assert r.returncode == 2 and "back/config.json: key '--dst': the output already exists" in r.stderr
    assert "Fix: pass --overwrite" in r.stderr
    assert sorted(p.name for p in back.iterdir()) == ["config.json"]
    r = run_cli("ckpt", "convert", "--model", "gpt2", "--src", dst, "--dst", back, "--reverse",
                "--config", yaml_path, "--overwrite")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((back / "config.json").read_text())["model_type"] == "gpt2"
