"""GlmForCausalLM configured as ChatGLM2 (HF) ↔ petrun ChatGLM2: conversion with the real CLI,
fp32 logits and loss parity, round trip back to HF. Needs the parity extra.

transformers' Glm is ChatGLM2's architecture: pre-norm RMSNorm, q|k|v with bias and 2 KV groups
(query head h reads group h // (heads / groups)), rotary on the first half of each head in
interleaved pairs (partial_rotary_factor 0.5, cos/sin repeat_interleave'd), gate|up halves of one
projection with SiLU, untied head. It keeps q/k/v as three projections (the converter
concatenates them into query_key_value) and has no hidden dropout (ChatGLM2's is 0.0).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "GlmForCausalLM"):
    pytest.skip("this transformers has no GlmForCausalLM", allow_module_level=True)

from tests.models import parity_helpers as ph  # noqa: E402

pytestmark = pytest.mark.parity

VOCAB, HIDDEN, LAYERS, HEADS, GROUPS, HEAD_DIM, FFN, SEQ = 97, 32, 2, 4, 2, 8, 40, 16
THETA = 500.0   # not 10000, so a wrong rope base would show
MODEL_CONFIG = {"type": "ChatGLM2Config", "padded_vocab_size": VOCAB, "hidden_size": HIDDEN,
                "num_layers": LAYERS, "num_attention_heads": HEADS,
                "multi_query_group_num": GROUPS, "kv_channels": HEAD_DIM,
                "ffn_hidden_size": FFN, "seq_length": SEQ, "rope_ratio": THETA / 10000.0,
                "layernorm_epsilon": 1e-5, "compute_dtype": "float32",
                "param_init_type": "float32"}


def _hf_model(dtype=torch.float32):
    cfg = transformers.GlmConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=GROUPS, head_dim=HEAD_DIM,
        partial_rotary_factor=0.5, attention_bias=True, rms_norm_eps=1e-5, rope_theta=THETA,
        max_position_embeddings=SEQ, tie_word_embeddings=False, pad_token_id=0,
        attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.GlmForCausalLM(cfg).eval()
    ph.randomize_torch(model, seed=2)
    return model.to(dtype)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("glm2")
    model = _hf_model()
    # Sharded on purpose: the converter must follow model.safetensors.index.json.
    ph.save_hf(model, tmp / "hf", max_shard_size="20KB")
    assert (tmp / "hf" / "model.safetensors.index.json").is_file()
    ph.convert("glm2", tmp / "hf", tmp / "glm2.ckpt")
    yaml_path = ph.write_petrun_yaml(tmp / "glm2.yaml", "ChatGLM2ForConditionalGeneration",
                                     MODEL_CONFIG)
    return model, tmp, yaml_path, ph.build_petrun(yaml_path, tmp / "glm2.ckpt")


def test_checkpoint_fuses_qkv_with_mindformers_names(converted):
    import mindspore as ms
    model, tmp, _, _ = converted
    ckpt = ms.load_checkpoint(str(tmp / "glm2.ckpt"))
    sd = model.state_dict()
    p, q = "model.layers.1.self_attn.", "transformer.encoder.layers.1.self_attention."
    for kind in ("weight", "bias"):
        want = np.concatenate([sd[f"{p}{x}_proj.{kind}"].numpy() for x in "qkv"])
        np.testing.assert_array_equal(ckpt[f"{q}query_key_value.{kind}"].asnumpy(), want)
    assert ckpt[q + "query_key_value.weight"].shape == (HEADS * HEAD_DIM + 2 * GROUPS * HEAD_DIM,
                                                        HIDDEN)
    assert ckpt["transformer.encoder.layers.0.mlp.dense_h_to_4h.weight"].shape == (2 * FFN, HIDDEN)
    assert {"transformer.embedding.embedding_weight", "transformer.output_layer.weight",
            "transformer.encoder.final_layernorm.weight"} <= set(ckpt)
    assert len(ckpt) == 3 + LAYERS * 7


def test_logits_match_hf(converted):
    model, _, _, net = converted
    ph.assert_logits_match(model, net, VOCAB)


def test_loss_with_preshifted_labels_matches_hf(converted):
    model, _, _, net = converted
    ids, labels = ph.labelled_batch(VOCAB, 3, SEQ, seed=4)
    want = ph.hf_loss(model, ids, labels)   # HF shifts inside
    # GLM2 data arrives shifted (MindFormers' ADGen): inputs ids[:, :-1], labels labels[:, 1:].
    got = ph.ms_loss(net, ids[:, :-1], labels[:, 1:])
    assert abs(got - want) <= ph.TOL, (got, want)
    # Feeding unshifted labels gives a different number: the model must not shift again.
    assert abs(ph.ms_loss(net, ids[:, :-1], labels[:, :-1]) - want) > 1e-2


def test_round_trip_gives_identical_tensors(converted):
    model, tmp, yaml_path, _ = converted
    ph.convert("glm2", tmp / "glm2.ckpt", tmp / "back", "--reverse", "--config", yaml_path)
    ph.assert_same_tensors(ph.safetensors_tensors(tmp / "hf"), ph.safetensors_tensors(tmp / "back"))
    again = transformers.GlmForCausalLM.from_pretrained(str(tmp / "back"),
                                                        attn_implementation="eager").eval()
    ids = ph.random_ids(VOCAB, 2, 11, seed=8)
    np.testing.assert_array_equal(ph.hf_logits(again, ids), ph.hf_logits(model, ids))


def test_bf16_to_fp16_conversion(tmp_path):
    """--dtype fp16 from a bf16 checkpoint goes through fp32 and lands within fp16 rounding."""
    import mindspore as ms
    model = _hf_model(torch.bfloat16)
    ph.save_hf(model, tmp_path / "hf")
    ph.convert("glm2", tmp_path / "hf", tmp_path / "fp16.ckpt", "--dtype", "fp16")
    ckpt = ms.load_checkpoint(str(tmp_path / "fp16.ckpt"))
    name = "transformer.encoder.layers.0.mlp.dense_4h_to_h.weight"
    assert ckpt[name].dtype == ms.float16
    want = model.state_dict()["model.layers.0.mlp.down_proj.weight"].float().numpy()
    np.testing.assert_array_equal(ckpt[name].asnumpy(), want.astype(np.float16))
