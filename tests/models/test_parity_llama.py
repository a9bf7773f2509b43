"""LlamaForCausalLM with GQA (HF) ↔ petrun Llama2: conversion with the real CLI (pure renames,
no q/k permutation), fp32 logits and loss parity, round trip back to HF. Needs the parity extra."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.models import parity_helpers as ph  # noqa: E402

pytestmark = pytest.mark.parity

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, SEQ = 97, 32, 2, 4, 2, 48, 16
MODEL_CONFIG = {"type": "LlamaConfig", "vocab_size": VOCAB, "hidden_size": HIDDEN,
                "num_layers": LAYERS, "num_heads": HEADS, "n_kv_heads": KV_HEADS,
                "intermediate_size": FFN, "seq_length": SEQ, "rms_norm_eps": 1e-5,
                "theta": 500.0, "compute_dtype": "float32", "param_init_type": "float32",
                "rotary_dtype": "float32", "pad_token_id": 0}


def _hf_model(tied=False):
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, rms_norm_eps=1e-5,
        rope_theta=500.0, max_position_embeddings=SEQ, tie_word_embeddings=tied,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ph.randomize_torch(model, seed=3)
    return model


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llama")
    model = _hf_model()
    ph.save_hf(model, tmp / "hf")
    ph.convert("llama2", tmp / "hf", tmp / "llama.ckpt")
    yaml_path = ph.write_petrun_yaml(tmp / "llama.yaml", "LlamaForCausalLM", MODEL_CONFIG)
    return model, tmp, yaml_path, ph.build_petrun(yaml_path, tmp / "llama.ckpt")


def test_checkpoint_is_a_pure_rename(converted):
    import mindspore as ms
    model, tmp, _, _ = converted
    ckpt = ms.load_checkpoint(str(tmp / "llama.ckpt"))
    sd = model.state_dict()
    for hf_name, ms_name in (("model.layers.1.self_attn.q_proj.weight",
                              "model.layers.1.attention.wq.weight"),
                             ("model.layers.1.self_attn.k_proj.weight",
                              "model.layers.1.attention.wk.weight"),
                             ("model.layers.0.mlp.gate_proj.weight",
                              "model.layers.0.feed_forward.w1.weight"),
                             ("model.layers.0.mlp.up_proj.weight",
                              "model.layers.0.feed_forward.w3.weight"),
                             ("model.norm.weight", "model.norm_out.weight"),
                             ("model.embed_tokens.weight", "model.tok_embeddings.embedding_weight"),
                             ("lm_head.weight", "lm_head.weight")):
        np.testing.assert_array_equal(ckpt[ms_name].asnumpy(), sd[hf_name].numpy())
    assert ckpt["model.layers.0.attention.wk.weight"].shape == (KV_HEADS * HIDDEN // HEADS, HIDDEN)
    assert len(ckpt) == 3 + LAYERS * 9


def test_logits_match_hf(converted):
    model, _, _, net = converted
    ph.assert_logits_match(model, net, VOCAB)


def test_loss_matches_hf(converted):
    model, _, _, net = converted
    ids, labels = ph.labelled_batch(VOCAB, 3, SEQ, seed=5)
    want, got = ph.hf_loss(model, ids, labels), ph.ms_loss(net, ids, labels)
    assert abs(got - want) <= ph.TOL, (got, want)


def test_round_trip_gives_identical_tensors(converted):
    model, tmp, yaml_path, _ = converted
    ph.convert("llama2", tmp / "llama.ckpt", tmp / "back", "--reverse", "--config", yaml_path)
    ph.assert_same_tensors(ph.safetensors_tensors(tmp / "hf"), ph.safetensors_tensors(tmp / "back"))
    again = transformers.LlamaForCausalLM.from_pretrained(str(tmp / "back"),
                                                          attn_implementation="eager").eval()
    ids = ph.random_ids(VOCAB, 2, 10, seed=9)
    np.testing.assert_array_equal(ph.hf_logits(again, ids), ph.hf_logits(model, ids))


def test_tied_embeddings(tmp_path):
    model = _hf_model(tied=True)
    ph.save_hf(model, tmp_path / "hf")
    ph.convert("llama2", tmp_path / "hf", tmp_path / "tied.ckpt")
    yaml_path = ph.write_petrun_yaml(tmp_path / "tied.yaml", "LlamaForCausalLM",
                                     {**MODEL_CONFIG, "tie_word_embeddings": True})
    net = ph.build_petrun(yaml_path, tmp_path / "tied.ckpt")
    ph.assert_logits_match(model, net, VOCAB, seqs=(7,))
