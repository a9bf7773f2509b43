"""GPT2LMHeadModel (HF) ↔ petrun GPT2: conversion with the real CLI, fp32 logits and loss parity,
round trip back to HF safetensors. Needs the parity extra (torch, transformers)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.models import parity_helpers as ph  # noqa: E402

pytestmark = pytest.mark.parity

VOCAB, HIDDEN, LAYERS, HEADS, POSITIONS = 97, 32, 2, 4, 16
MODEL_CONFIG = {"type": "GPT2Config", "vocab_size": VOCAB, "hidden_size": HIDDEN,
                "num_layers": LAYERS, "num_heads": HEADS, "seq_length": POSITIONS,
                "compute_dtype": "float32", "param_init_type": "float32",
                "hidden_act": "gelu", "pad_token_id": 0, "eos_token_id": 2, "bos_token_id": 1}


def _hf_model(dtype=torch.float32, activation="gelu_new"):
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                  n_positions=POSITIONS, activation_function=activation,
                                  layer_norm_epsilon=1e-5, bos_token_id=1, eos_token_id=2,
                                  attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ph.randomize_torch(model, seed=1)
    return model.to(dtype)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpt2")
    model = _hf_model()
    ph.save_hf(model, tmp / "hf")
    ph.convert("gpt2", tmp / "hf", tmp / "gpt2.ckpt")
    yaml_path = ph.write_petrun_yaml(tmp / "gpt2.yaml", "GPT2LMHeadModel", MODEL_CONFIG)
    return model, tmp, yaml_path, ph.build_petrun(yaml_path, tmp / "gpt2.ckpt")


def test_checkpoint_has_mindformers_names_and_layouts(converted):
    import mindspore as ms
    model, tmp, _, _ = converted
    ckpt = ms.load_checkpoint(str(tmp / "gpt2.ckpt"))
    sd = model.state_dict()
    c_attn = sd["transformer.h.1.attn.c_attn.weight"].numpy()   # Conv1D: [in, 3*hidden]
    q, k, v = np.split(c_attn, 3, axis=-1)
    blk = "backbone.blocks.1."
    np.testing.assert_array_equal(ckpt[blk + "attention.dense1.weight"].asnumpy(), q.T)
    np.testing.assert_array_equal(ckpt[blk + "attention.dense2.weight"].asnumpy(), k.T)
    np.testing.assert_array_equal(ckpt[blk + "attention.dense3.weight"].asnumpy(), v.T)
    np.testing.assert_array_equal(ckpt[blk + "attention.dense3.bias"].asnumpy(),
                                  sd["transformer.h.1.attn.c_attn.bias"].numpy()[2 * HIDDEN:])
    # Stored [in, out] on both sides: no transpose.
    np.testing.assert_array_equal(ckpt[blk + "output.mapping.weight"].asnumpy(),
                                  sd["transformer.h.1.mlp.c_fc.weight"].numpy())
    assert ckpt[blk + "output.mapping.weight"].shape == (HIDDEN, 4 * HIDDEN)
    np.testing.assert_array_equal(ckpt["backbone.layernorm.gamma"].asnumpy(),
                                  sd["transformer.ln_f.weight"].numpy())
    assert "backbone.embedding.position_embedding.embedding_table" in ckpt
    assert len(ckpt) == 4 + LAYERS * 16   # no lm_head: the head is tied to the word embedding


def test_logits_match_hf(converted):
    model, _, _, net = converted
    ph.assert_logits_match(model, net, VOCAB)


def test_loss_matches_hf(converted):
    model, _, _, net = converted
    ids, labels = ph.labelled_batch(VOCAB, 3, POSITIONS, seed=3)
    # Both shift inside: HF compares logits[:, :-1] with labels[:, 1:]; petrun feeds
    # ids[:, :-1] and targets labels[:, 1:] (the last position predicts nothing either way).
    want, got = ph.hf_loss(model, ids, labels), ph.ms_loss(net, ids, labels)
    assert abs(got - want) <= ph.TOL, (got, want)


def test_dropout_only_in_training(converted):
    from mindspore import Tensor
    _, _, yaml_path, _ = converted
    from petrun.api import build_model
    net = build_model(str(yaml_path), device_target="CPU")
    ids = Tensor(ph.random_ids(VOCAB, 2, 8, seed=5))
    net.set_train(False)
    assert np.array_equal(net(ids).asnumpy(), net(ids).asnumpy())
    net.set_train(True)
    assert not np.array_equal(net(ids).asnumpy(), net(ids).asnumpy())


def test_round_trip_gives_identical_tensors(converted):
    model, tmp, yaml_path, _ = converted
    ph.convert("gpt2", tmp / "gpt2.ckpt", tmp / "back", "--reverse", "--config", yaml_path)
    ph.assert_same_tensors(ph.safetensors_tensors(tmp / "hf"), ph.safetensors_tensors(tmp / "back"))
    # The written config.json rebuilds the same model in transformers.
    again = transformers.GPT2LMHeadModel.from_pretrained(str(tmp / "back"),
                                                         attn_implementation="eager").eval()
    ids = ph.random_ids(VOCAB, 2, 9, seed=7)
    np.testing.assert_array_equal(ph.hf_logits(again, ids), ph.hf_logits(model, ids))


def test_bf16_round_trip_is_bit_exact(tmp_path):
    model = _hf_model(torch.bfloat16)
    ph.save_hf(model, tmp_path / "hf")
    ph.convert("gpt2", tmp_path / "hf", tmp_path / "bf16.ckpt")   # no --dtype: stays bf16
    yaml_path = ph.write_petrun_yaml(tmp_path / "gpt2.yaml", "GPT2LMHeadModel", MODEL_CONFIG)
    ph.convert("gpt2", tmp_path / "bf16.ckpt", tmp_path / "back", "--reverse", "--config",
               yaml_path)
    ph.assert_same_tensors(ph.safetensors_tensors(tmp_path / "hf"),
                           ph.safetensors_tensors(tmp_path / "back"))
    assert ph.read_json(tmp_path / "back" / "config.json")["torch_dtype"] == "bfloat16"


def test_fast_gelu_is_transformers_quick_gelu(tmp_path):
    """gpt2-xl/13b use MindSpore's fast_gelu, x·sigmoid(1.702x): transformers' quick_gelu."""
    model = _hf_model(activation="quick_gelu")
    ph.save_hf(model, tmp_path / "hf")
    ph.convert("gpt2", tmp_path / "hf", tmp_path / "xl.ckpt")
    yaml_path = ph.write_petrun_yaml(tmp_path / "xl.yaml", "GPT2LMHeadModel",
                                     {**MODEL_CONFIG, "hidden_act": "fast_gelu"})
    ph.assert_logits_match(model, ph.build_petrun(yaml_path, tmp_path / "xl.ckpt"), VOCAB,
                           seqs=(12,))
    ph.convert("gpt2", tmp_path / "xl.ckpt", tmp_path / "back", "--reverse", "--config", yaml_path)
    assert ph.read_json(tmp_path / "back" / "config.json")["activation_function"] == "quick_gelu"
