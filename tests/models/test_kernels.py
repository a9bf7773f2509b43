"""petrun/models/kernels.py: on Ascend the YAML switches select MindFormers r1.3's fused kernels,
elsewhere never; and the models feed those kernels what their documented semantics need.

The fused primitives cannot run here, so reference implementations of their documented semantics
(tests/models/kernel_references.py, themselves checked against numpy below) stand in for them
through kernels.stand_ins. A model built for Ascend with the stand-ins must then compute what the
composite CPU model computes, for all three families, with padding, P-Tuning v2 prefixes (raw
and through petrun.pet, gradients included), packed rows and the KV cache. The arguments each primitive is built with are compared with the
values MindFormers r1.3 passes (oracle: its source, cited at each assertion).
"""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from petrun.infer.generate import (GenerationConfig, attention_mask, generate, left_pad,
                                   positions_of)
from petrun.models import kernels
from petrun.models.configs import ChatGLM2Config, GPT2Config, LlamaConfig
from petrun.models.glm2 import ChatGLM2ForConditionalGeneration
from petrun.models.gpt2 import GPT2LMHeadModel
from petrun.models.kernel_choice import COMPOSITE, FA_NO_LIMIT, select_kernels
from petrun.models.kernels import FlashAttentionCore, FusedRMSNorm, SwapRotary
from petrun.models.layers import ApplyRotary, DotProductAttention, RMSNorm
from petrun.models.llama import LlamaForCausalLM
from petrun.pet import apply_pet
from tests.models.kernel_references import (STAND_INS, RefFlashAttentionScore, RefRmsNorm,
                                            np_attention)
from tests.models.model_helpers import randomize, tiny_config

VOCAB, SEQ, PAD = 97, 16, 0
FAMILIES = ("llama2", "glm2", "gpt2")
SWITCHES = dict(use_flash_attention=True)


def config(family, **over):
    if family == "llama2":
        return tiny_config(seq_length=SEQ, pad_token_id=PAD, **{**SWITCHES, **over})
    if family == "glm2":
        return ChatGLM2Config(num_layers=2, padded_vocab_size=VOCAB, hidden_size=32,
                              ffn_hidden_size=40, kv_channels=8, num_attention_heads=4,
                              multi_query_group_num=2, seq_length=SEQ, rope_ratio=0.05,
                              compute_dtype="float32", param_init_type="float32",
                              **{**SWITCHES, **over})
    return GPT2Config(num_layers=2, vocab_size=VOCAB, hidden_size=32, num_heads=4,
                      seq_length=SEQ, compute_dtype="float32", pad_token_id=PAD, eos_token_id=2,
                      **{"embedding_dropout_prob": 0.0, "hidden_dropout_rate": 0.0,
                         "attention_dropout_rate": 0.0, **SWITCHES, **over})


MODEL = {"llama2": LlamaForCausalLM, "glm2": ChatGLM2ForConditionalGeneration,
         "gpt2": GPT2LMHeadModel}


def pair(family, **over):
    """(composite CPU model, Ascend-selected model with the stand-ins), equal weights, eval."""
    cfg = config(family, **over)
    plain = MODEL[family](cfg, device_target="CPU")
    with kernels.stand_ins(**STAND_INS):
        fused = MODEL[family](cfg, device_target="Ascend")
    for net in (plain, fused):
        randomize(net, seed=7)
        net.set_train(False)
    assert [p.name for p in plain.get_parameters()] == [p.name for p in fused.get_parameters()]
    assert any(isinstance(c, FlashAttentionCore) for _, c in fused.cells_and_names())
    return plain, fused


def kinds(net):
    return {type(c).__name__ for _, c in net.cells_and_names()}


def ids(batch=2, seq=SEQ, seed=0, pad_tail=(0, 4)):
    rng = np.random.default_rng(seed)
    x = rng.integers(3, VOCAB, (batch, seq)).astype(np.int32)
    for b, n in enumerate(pad_tail):
        if n:
            x[b, -n:] = PAD
    return x


def close(a, b):
    np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ selection

def test_ascend_switches_select_fused_and_cpu_never():
    llama = LlamaConfig(use_flash_attention=True, fused_rms_norm=True, use_rope_slice=False)
    for device in ("CPU", "GPU", None):
        for family, cfg in (("llama2", llama), ("glm2", ChatGLM2Config(use_flash_attention=True)),
                            ("gpt2", GPT2Config(use_flash_attention=True))):
            assert select_kernels(family, cfg, device) == COMPOSITE
    got = select_kernels("llama2", llama, "Ascend")
    assert (got.flash_attention, got.fused_rms_norm, got.rope_form) == (True, True, "swap_matmul")
    off = select_kernels("llama2", LlamaConfig(fused_rms_norm=False, use_rope_slice=True), "Ascend")
    assert (off.flash_attention, off.fused_rms_norm, off.rope_form) == (False, False, "slice")
    # ChatGLM2RMSNorm has no switch: the primitive whenever the chip has it (not on 910A)
    assert select_kernels("glm2", ChatGLM2Config(), "Ascend").fused_rms_norm
    assert not select_kernels("glm2", ChatGLM2Config(), "Ascend", "Ascend910").fused_rms_norm
    assert not select_kernels("llama2", llama, "Ascend", "910a").fused_rms_norm
    assert select_kernels("gpt2", GPT2Config(), "Ascend").fused == ()


@pytest.mark.parametrize("family", FAMILIES)
def test_models_build_what_is_selected(family):
    on = dict(fused_rms_norm=True, use_rope_slice=False) if family == "llama2" else {}
    cpu = MODEL[family](config(family, **on), device_target="CPU")
    assert kinds(cpu) & {"FlashAttentionCore", "FusedRMSNorm", "SwapRotary"} == set()
    assert "DotProductAttention" in kinds(cpu)
    with kernels.stand_ins(**STAND_INS):
        ascend = MODEL[family](config(family, **on), device_target="Ascend")
    want = {"llama2": {"FlashAttentionCore", "FusedRMSNorm", "SwapRotary"},
            "glm2": {"FlashAttentionCore", "FusedRMSNorm"}, "gpt2": {"FlashAttentionCore"}}
    assert kinds(ascend) & {"FlashAttentionCore", "FusedRMSNorm", "SwapRotary"} == want[family]
    assert "DotProductAttention" not in kinds(ascend)
    assert ("RMSNorm" in kinds(cpu)) == (family != "gpt2")
    assert "RMSNorm" not in kinds(ascend)
    # LlamaRMSNorm marks its input cast recompute() in training; ChatGLM2RMSNorm does not
    casts = [c.cast.attrs.get("recompute", False) for _, c in ascend.cells_and_names()
             if isinstance(c, FusedRMSNorm)]
    # (2 layers × 2 norms + the final norm; GPT-2 has LayerNorms)
    assert casts == {"llama2": [True] * 5, "glm2": [False] * 5, "gpt2": []}[family]


def test_primitives_get_mindformers_arguments():
    """Oracle: MindFormers v1.3.0 — llama_transformer.py LLamaAttention builds FlashAttention(
    head_num=n_head, pre_tokens=2147483647, next_tokens=0, input_layout="BNSD" (cp 1),
    keep_prob=1., scale_value=1/sqrt(head_dim), sparse_mode=0); glm2_transformer.py and
    transformer.py (GPT-2) pass pre_tokens=65536, next_tokens=0, keep_prob=1 - attention
    dropout; flash_attention.py adds inner_precise=0; LlamaRMSNorm builds P.RmsNorm(eps)."""
    RefFlashAttentionScore.calls.clear()
    RefRmsNorm.calls.clear()
    with kernels.stand_ins(**STAND_INS):
        LlamaForCausalLM(config("llama2", rms_norm_eps=1e-6), device_target="Ascend")
    mf = dict(head_num=4, keep_prob=1.0, scale_value=1 / math.sqrt(8), pre_tokens=2147483647,
              next_tokens=0, inner_precise=0, input_layout="BNSD", sparse_mode=0)
    assert RefFlashAttentionScore.calls[0] == mf
    assert RefRmsNorm.calls[0] == dict(epsilon=1e-6)
    RefFlashAttentionScore.calls.clear()
    with kernels.stand_ins(**STAND_INS):
        GPT2LMHeadModel(config("gpt2", attention_dropout_rate=0.25), device_target="Ascend")
        ChatGLM2ForConditionalGeneration(config("glm2", attention_dropout=0.25),
                                         device_target="Ascend")
    dropping = [c for c in RefFlashAttentionScore.calls if c["keep_prob"] != 1.0]
    assert dropping and all(c["keep_prob"] == 0.75 and c["pre_tokens"] in (65536, FA_NO_LIMIT)
                            for c in dropping)
    assert {(c["pre_tokens"], c["next_tokens"]) for c in RefFlashAttentionScore.calls} == {
        (65536, 0), (FA_NO_LIMIT, FA_NO_LIMIT)}


def test_fused_cells_carry_mindformers_strategies():
    """flash_attention.py _generate_flash_attention_strategy, BNSD, cp 1, use_mqa False:
    ((dp, mp, 1, 1), (dp, mp, 1, 1), (dp, mp, 1, 1)) + dropout bits (dp, mp, 1, 1) + mask
    (dp, 1, 1, 1); LlamaRMSNorm.shard: norm ((dp, 1, 1), (1,)). shard.py sets what the cells
    give (semi-auto parallel cannot run on CPU)."""
    heads, mask = (2, 4, 1, 1), (2, 1, 1, 1)
    with kernels.stand_ins(**STAND_INS):
        plain = FlashAttentionCore(8, 4, 2)
        dropping = FlashAttentionCore(8, 4, 2, attention_dropout=0.1)
    assert plain.shard_strategies(2, 4) == {
        "fa": (heads, heads, heads, mask), "fa_open": (heads, heads, heads, mask)}
    assert dropping.shard_strategies(2, 4)["fa_open_drop"] == (heads,) * 4 + (mask,)
    assert FusedRMSNorm.shard_strategies(2, 4) == {"norm": ((2, 1, 1), (1,))}


# ----------------------------------------------------------------- the references are right

def test_reference_flash_attention_matches_numpy():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 4, 5, 8)).astype(np.float32)
    k, v = (rng.normal(size=(2, 2, 7, 8)).astype(np.float32) for _ in range(2))
    discard = (rng.random((2, 1, 5, 7)) < 0.3).astype(np.uint8)
    discard[..., 0] = 0   # no fully discarded row
    want = np_attention(q, k, v, discard == 0, 0.3)
    for layout in ("BNSD", "BSH"):
        fa = RefFlashAttentionScore(4, scale_value=0.3, input_layout=layout)
        args = [q, k, v] if layout == "BNSD" else [
            x.transpose(0, 2, 1, 3).reshape(2, x.shape[2], -1) for x in (q, k, v)]
        out = fa(*(Tensor(a) for a in args), None, None, None, Tensor(discard), None)[3].asnumpy()
        if layout == "BSH":
            out = out.reshape(2, 5, 4, 8).transpose(0, 2, 1, 3)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    # next_tokens 0 with nothing discarded is causal (band from the top-left)
    square = [Tensor(rng.normal(size=(1, 2, 6, 8)).astype(np.float32)) for _ in range(3)]
    causal = RefFlashAttentionScore(2, scale_value=0.5, next_tokens=0, input_layout="BNSD")
    out = causal(*square, None, None, None, Tensor(np.zeros((6, 6), np.uint8)), None)[3]
    keep = np.tril(np.ones((6, 6), bool))[None, None]
    np.testing.assert_allclose(out.asnumpy(), np_attention(*(t.asnumpy() for t in square), keep,
                                                           0.5), rtol=1e-4, atol=1e-5)


def test_reference_rms_norm_matches_numpy():
    rng = np.random.default_rng(2)
    x, g = rng.normal(size=(2, 3, 16)).astype(np.float32), rng.normal(size=16).astype(np.float32)
    want = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * g
    np.testing.assert_allclose(RefRmsNorm(1e-5)(Tensor(x), Tensor(g))[0].asnumpy(), want,
                               rtol=1e-5, atol=1e-6)


def test_swap_matrix_rotary_equals_slice_rotary():
    rng = np.random.default_rng(3)
    x = Tensor(rng.normal(size=(2, 4, 6, 8)).astype(np.float32))
    cos, sin = (Tensor(rng.normal(size=(1, 1, 6, 8)).astype(np.float32)) for _ in range(2))
    np.testing.assert_array_equal(SwapRotary(8)(x, cos, sin).asnumpy(),
                                  ApplyRotary()(x, cos, sin).asnumpy())


# ------------------------------------------------------ the models through the fused path

@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_loss_equal_composite(family, mode):
    plain, fused = pair(family)
    x = ids()
    close(plain(Tensor(x)), fused(Tensor(x)))
    labels = np.where(x == PAD, -100, x).astype(np.int32)
    close(plain(Tensor(x), Tensor(labels)), fused(Tensor(x), Tensor(labels)))


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_key_values_equal_composite(family):
    """P-Tuning v2 / prefix tuning: (2, B, Nkv, P, D) per layer in front of the keys."""
    plain, fused = pair(family)
    kv = 4 if family == "gpt2" else 2
    rng = np.random.default_rng(4)
    prefix = tuple(Tensor(rng.normal(0, 1, (2, 2, kv, 3, 8)).astype(np.float32))
                   for _ in range(2))
    x = Tensor(ids())
    close(plain(x, None, prefix), fused(x, None, prefix))
    assert np.abs(plain(x, None, prefix).asnumpy() - plain(x).asnumpy()).max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_rows_equal_composite(family):
    """Block-causal masks from segment_ids, positions restarting per sample."""
    plain, fused = pair(family)
    x = ids(pad_tail=(0, 3))
    segments = np.array([[1] * 6 + [2] * 10, [1] * 9 + [2] * 4 + [0] * 3], np.int32)
    positions = np.array([list(range(6)) + list(range(10)),
                          list(range(9)) + list(range(4)) + [0] * 3], np.int32)
    args = (Tensor(x), None, None, None, Tensor(positions), Tensor(segments))
    close(plain(*args), fused(*args))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("with_prefix", [False, True])
def test_kv_cache_decode_equals_composite(family, with_prefix):
    """Prefill of left-padded prompts then two single-token steps on a growing cache (optionally
    holding a P-Tuning v2 prefix), masks and positions from petrun.infer.generate's helpers."""
    plain, fused = pair(family)
    prompt_ids, valid = left_pad([[5, 6, 7, 8, 9], [10, 11, 12]], PAD)
    kv = 4 if family == "gpt2" else 2
    rng = np.random.default_rng(5)
    past_len = 0
    past = {"plain": None, "fused": None}
    if with_prefix:
        past_len = 3
        prefix = [tuple(Tensor(rng.normal(0, 1, (2, kv, 3, 8)).astype(np.float32))
                        for _ in range(2)) for _ in range(2)]
        past = {"plain": prefix, "fused": prefix}
    key_valid = np.concatenate([np.ones((2, past_len), bool), valid], 1)
    feed, positions = prompt_ids, positions_of(valid)
    for _ in range(3):
        mask = attention_mask(key_valid, past_len, feed.shape[1])
        out = {}
        for name, net in (("plain", plain), ("fused", fused)):
            out[name], past[name] = net.decode(Tensor(feed), Tensor(positions), Tensor(mask),
                                               past[name])
        close(out["plain"], out["fused"])
        past_len += feed.shape[1]
        feed = out["plain"].asnumpy()[:, -1].argmax(-1).astype(np.int32)[:, None]
        positions = positions[:, -1:] + 1
        key_valid = np.concatenate([key_valid, np.ones((2, 1), bool)], 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_generation_equals_composite(family):
    """petrun.infer.generate's compiled fixed-size-cache steps (ms.jit) through the fused cells."""
    plain, fused = pair(family)
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12]]
    cfg = GenerationConfig(max_new_tokens=4, jit=True)
    assert generate(plain, prompts, cfg).tokens == generate(fused, prompts, cfg).tokens


def test_cpu_build_ignores_the_switches():
    """Same cells, same graph, same numbers as a config without the switches (CPU)."""
    on = LlamaForCausalLM(config("llama2", fused_rms_norm=True, use_rope_slice=False),
                          device_target="CPU")
    off = LlamaForCausalLM(config("llama2", use_flash_attention=False, fused_rms_norm=False,
                                  use_rope_slice=True), device_target="CPU")
    assert [(n, type(c).__name__) for n, c in on.cells_and_names()] == \
        [(n, type(c).__name__) for n, c in off.cells_and_names()]
    for net in (on, off):
        randomize(net, seed=1)
        net.set_train(False)
    x = Tensor(ids())
    np.testing.assert_array_equal(on(x).asnumpy(), off(x).asnumpy())
    assert sum(isinstance(c, (DotProductAttention, RMSNorm, ApplyRotary))
               for _, c in on.cells_and_names()) == 2 * 4 + 1   # per layer: core, 2 norms, rotary


@pytest.mark.parametrize("family", FAMILIES)
def test_ptuning2_loss_and_gradients_equal_composite(family):
    """P-Tuning v2 applied by petrun.pet (its prefix encoder feeding the attention): the loss and
    the gradient of the prefix table, which backpropagates through FlashAttentionCore."""
    plain, fused = pair(family)
    cfg = {"pet_type": "ptuning2", "pre_seq_len": 3, "prefix_projection": False,
           "dropout_prob": 0.0}
    nets = [apply_pet(net, cfg).model for net in (plain, fused)]
    x = ids()
    labels = Tensor(np.where(x == PAD, -100, x).astype(np.int32))
    results = []
    for net in nets:
        randomize(net, seed=9)
        net.set_train(False)
        weights = net.trainable_params()
        loss, grads = ms.value_and_grad(net, grad_position=None, weights=weights)(Tensor(x),
                                                                                  labels)
        results.append((loss, grads))
    close(results[0][0], results[1][0])
    assert len(results[0][1]) == len(results[1][1]) >= 1
    for a, b in zip(results[0][1], results[1][1]):
        assert np.abs(a.asnumpy()).max() > 0
        close(a, b)


@pytest.mark.parametrize("layout", ["BNSD", "BSH"])
def test_flash_attention_core_equals_dot_product_attention(layout):
    """The cell alone, both layouts MindFormers uses (BSH only with context parallel), GQA, a
    prefix, and more keys than queries (a cache)."""
    rng = np.random.default_rng(6)
    with kernels.stand_ins(**STAND_INS):
        fused = FlashAttentionCore(8, 4, 2, compute_dtype=ms.float32, input_layout=layout)
    plain = DotProductAttention(8, 4, 2)
    q = Tensor(rng.normal(size=(2, 4, 5, 8)).astype(np.float32))
    for keys in (5, 9):
        k, v = (Tensor(rng.normal(size=(2, 2, keys, 8)).astype(np.float32)) for _ in range(2))
        mask = (rng.random((2, 1, 5, keys)) < 0.7).astype(np.float32)
        mask[..., 0] = 1
        if keys == 5:   # queries aligned with keys: the models' masks are causal (band contract)
            mask *= np.tril(np.ones((5, 5), np.float32))
        prefix = Tensor(rng.normal(size=(2, 2, 2, 3, 8)).astype(np.float32))
        close(plain(q, k, v, Tensor(mask)), fused(q, k, v, Tensor(mask)))
        close(plain(q, k, v, Tensor(mask), prefix), fused(q, k, v, Tensor(mask), prefix))
