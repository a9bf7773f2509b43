"""Packed rows (train_dataset.packing) on the model side: with position_ids and segment_ids every
family computes, for each sample of a packed row, exactly what the sample computes on its own.

Oracles: each sample run alone in a row of its own (right-padded, no new arguments); the same
samples as one ordinary padded batch; petrun.data.packing.block_causal_mask for the mask. The
packed loss is a mean over every target token of the row, so it must equal the token-weighted
mean of the per-sample losses, sum(loss_i * n_i) / sum(n_i).
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from petrun.data.packing import IGNORE, block_causal_mask, first_fit_decreasing, pack
from petrun.models.configs import ChatGLM2Config, GPT2Config
from petrun.models.glm2 import ChatGLM2ForConditionalGeneration
from petrun.models.gpt2 import GPT2LMHeadModel
from petrun.models.layers import segment_causal_mask
from petrun.models.llama import LlamaForCausalLM
from petrun.pet import apply_pet
from tests.models.conftest import MODES
from tests.models.model_helpers import randomize, tiny_config

PAD = 0
VOCAB = 97
SEQ = 16
LENGTHS = [5, 9, 3, 7, 4, 11]     # first-fit decreasing into 3 rows: 11+5, 9+7, 4+3
LORA_TARGETS = {"llama2": ".*wq|.*wv", "glm2": ".*query_key_value", "gpt2": ".*dense1|.*dense2"}


def build(family):
    """(net, shift_in_model) for a tiny fp32 model of `family` with random weights, eval mode."""
    if family == "llama2":
        net, shift = LlamaForCausalLM(tiny_config(seq_length=SEQ, pad_token_id=PAD)), True
    elif family == "glm2":
        net, shift = ChatGLM2ForConditionalGeneration(ChatGLM2Config(
            num_layers=2, padded_vocab_size=VOCAB, hidden_size=32, ffn_hidden_size=40,
            kv_channels=8, num_attention_heads=4, multi_query_group_num=2, seq_length=SEQ,
            rope_ratio=0.05, compute_dtype="float32", param_init_type="float32")), False
    else:
        net, shift = GPT2LMHeadModel(GPT2Config(
            num_layers=2, vocab_size=VOCAB, hidden_size=32, num_heads=4, seq_length=SEQ,
            compute_dtype="float32", pad_token_id=PAD, eos_token_id=2, embedding_dropout_prob=0.0,
            hidden_dropout_rate=0.0, attention_dropout_rate=0.0)), True
    randomize(net, seed=3)
    net.set_train(False)
    return net, shift


def samples(shift, seed=0):
    """Right-padded [n, row_len] ids and labels of LENGTHS real tokens: a 2-token prompt with
    ignored labels, then targets; one pad-id token inside a sample (a real token that the
    Llama/GPT-2 mask hides as a key and their loss skips, alone or packed alike)."""
    rng = np.random.default_rng(seed)
    row_len = SEQ + 1 if shift else SEQ
    ids = np.full((len(LENGTHS), row_len), PAD, np.int32)
    labels = np.full((len(LENGTHS), row_len), IGNORE, np.int32)
    for i, m in enumerate(LENGTHS):
        ids[i, :m] = rng.integers(1, VOCAB, m)
        # shift in model: label j is token j's own id (the target of position j - 1);
        # pre-shifted (GLM2): label j is the target of position j itself
        labels[i, 2:m] = ids[i, 2:m] if shift else rng.integers(1, VOCAB, m - 2)
    ids[1, 4] = PAD
    return ids, labels


def targets_of(ids, labels, m, shift):
    """How many tokens sample (ids, labels) of real length m is scored on."""
    if shift:
        return int(np.sum((labels[1:m] != IGNORE) & (ids[:m - 1] != PAD)))
    return int(np.sum(labels[:m] != IGNORE))


def placements(row_len):
    """(row, start) of every sample in the packed rows, as pack() lays them out."""
    where, bins = {}, first_fit_decreasing(LENGTHS, row_len)
    for r, members in enumerate(bins):
        at = 0
        for i in members:
            where[i] = (r, at)
            at += LENGTHS[i]
    return where


def packed_args(packed):
    return (Tensor(packed.input_ids), Tensor(packed.labels), Tensor(packed.position_ids),
            Tensor(packed.segment_ids))


def standalone_losses(net, ids, labels, shift):
    """Each sample's loss in a row of its own, and its target count."""
    losses, counts = [], []
    for i, m in enumerate(LENGTHS):
        losses.append(float(net(Tensor(ids[i:i + 1]), Tensor(labels[i:i + 1])).asnumpy()))
        counts.append(targets_of(ids[i], labels[i], m, shift))
    return np.array(losses), np.array(counts)


def check_packed_loss(net, shift):
    ids, labels = samples(shift)
    packed = pack(ids, labels, pad_id=PAD, shift_in_model=shift)
    assert packed.rows == 3 and packed.samples == len(LENGTHS)
    p_ids, p_labels, pos, seg = packed_args(packed)
    got = float(net(p_ids, p_labels, None, None, pos, seg).asnumpy())

    losses, counts = standalone_losses(net, ids, labels, shift)
    assert counts.min() > 0 and len(set(np.round(losses, 4))) == len(LENGTHS)
    assert abs(got - float(np.sum(losses * counts) / np.sum(counts))) <= 1e-5
    padded = float(net(Tensor(ids), Tensor(labels)).asnumpy())
    assert abs(got - padded) <= 1e-5
    # the arguments matter: without them the packed samples attend across their boundaries
    leaky = float(net(p_ids, p_labels).asnumpy())
    assert abs(leaky - got) > 1e-3
    return got


# ------------------------------------------------------------------------------------- the mask
@pytest.mark.parametrize("mode", list(MODES))
def test_segment_causal_mask_is_block_causal_mask(mode):
    seg = np.array([[1, 1, 1, 2, 2, 0, 0], [1, 2, 2, 2, 3, 3, 0], [1, 1, 1, 1, 1, 1, 1]], np.int32)
    fn = ms.jit(segment_causal_mask) if mode == "graph" else segment_causal_mask
    mask = fn(Tensor(seg)).asnumpy()
    assert mask.shape == (3, 1, 7, 7) and mask.dtype == np.float32
    np.testing.assert_array_equal(mask[:, 0] > 0.5, block_causal_mask(seg))


# ------------------------------------------------------------------------------------- the loss
CASES = [("llama2", "graph"), ("llama2", "pynative"), ("glm2", "pynative"), ("glm2", "graph"),
         ("gpt2", "pynative"), ("gpt2", "graph")]


@pytest.mark.parametrize("family, mode", CASES)
def test_packed_loss_is_the_token_weighted_mean_of_the_samples(family, mode):
    ms.set_context(mode=MODES[mode])
    try:
        net, shift = build(family)
        check_packed_loss(net, shift)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.mark.parametrize("family, mode", CASES)
def test_packed_logits_equal_each_samples_own(family, mode):
    ms.set_context(mode=MODES[mode])
    try:
        net, shift = build(family)
        ids, labels = samples(shift)
        packed = pack(ids, labels, pad_id=PAD, shift_in_model=shift)
        # SEQ tokens, what the model sees in training (GPT-2 has SEQ positions); every packed
        # row here ends in padding, so no sample is cut
        rows = [Tensor(a[:, :SEQ]) for a in (packed.input_ids, packed.position_ids,
                                              packed.segment_ids)]
        logits = net(rows[0], position_ids=rows[1], segment_ids=rows[2]).asnumpy()
        assert logits.shape == (packed.rows, SEQ, VOCAB)
        for i, (r, at) in placements(ids.shape[1]).items():
            m = LENGTHS[i]
            assert at + m <= SEQ
            alone = net(Tensor(ids[i:i + 1, :SEQ])).asnumpy()[0, :m]
            np.testing.assert_allclose(logits[r, at:at + m], alone, rtol=0, atol=1e-5)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.mark.parametrize("family", ["llama2", "glm2"])
def test_rotary_tables_are_taken_at_the_packed_positions(family, monkeypatch):
    """Rotary scores depend only on q - k, so under the block-diagonal mask restarting positions
    change the outputs only by rounding (more at large offsets, in low precision): the loss and
    logits tests cannot see them for Llama/GLM2, so check that the tables are read there."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net, shift = build(family)
    rotary = net.model.rotary if family == "llama2" else net.transformer.rotary_pos_emb
    seen, real_at = [], type(rotary).at

    def spy(self, positions):
        seen.append(positions.asnumpy())
        return real_at(self, positions)
    monkeypatch.setattr(type(rotary), "at", spy)
    ids, labels = samples(shift)
    packed = pack(ids, labels, pad_id=PAD, shift_in_model=shift)
    net(*packed_args(packed)[:2], None, None, *packed_args(packed)[2:])
    want = packed.position_ids[:, :-1] if shift else packed.position_ids
    assert len(seen) == 1 and np.array_equal(seen[0], want)
    net(Tensor(ids), Tensor(labels))
    assert len(seen) == 1          # the default path slices the tables as before


# ------------------------------------------------------------------------- the default is untouched
@pytest.mark.parametrize("family", list(LORA_TARGETS))
def test_default_calls_are_unchanged(family):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net, shift = build(family)
    ids, labels = samples(shift)
    ids_t, labels_t = Tensor(ids), Tensor(labels)
    assert np.array_equal(net(ids_t, labels_t).asnumpy(),
                          net(ids_t, labels_t, None, None, None, None).asnumpy())
    tokens = Tensor(ids[:, :SEQ])
    assert np.array_equal(net(tokens).asnumpy(),
                          net(tokens, None, None, None, None, None).asnumpy())
    # a row holding one sample from position 0 is the ordinary causal computation
    batch, row_len = ids.shape
    pos = np.tile(np.arange(row_len, dtype=np.int32), (batch, 1))
    seg = np.ones((batch, row_len), np.int32)
    np.testing.assert_allclose(
        net(ids_t, labels_t, None, None, Tensor(pos), Tensor(seg)).asnumpy(),
        net(ids_t, labels_t).asnumpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        net(tokens, None, None, None, Tensor(pos[:, :SEQ]), Tensor(seg[:, :SEQ])).asnumpy(),
        net(tokens).asnumpy(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------- with PET
@pytest.mark.parametrize("family", list(LORA_TARGETS))
def test_lora_model_takes_the_packing_arguments(family):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net, shift = build(family)
    report = apply_pet(net, {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8,
                             "target_modules": LORA_TARGETS[family]})
    assert report.model is net and report.targets   # LoRA swaps layers in place
    randomize(net, seed=5)      # B non-zero, so the adapters change the outputs
    net.set_train(False)
    check_packed_loss(net, shift)


def test_packed_gradient_is_the_token_weighted_sum_of_the_samples():
    """What training sees: the gradient of the packed loss equals that of the padded batch."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net, shift = build("llama2")
    apply_pet(net, {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8,
                    "target_modules": LORA_TARGETS["llama2"]})
    randomize(net, seed=5)
    ids, labels = samples(shift)
    packed = pack(ids, labels, pad_id=PAD, shift_in_model=shift)
    weights = net.trainable_params()
    grad = ms.grad(net, grad_position=None, weights=weights)
    got = grad(*packed_args(packed)[:2], None, None, *packed_args(packed)[2:])
    want = grad(Tensor(ids), Tensor(labels))
    assert len(got) == len(weights) == 8
    for g, w in zip(got, want):
        assert np.abs(w.asnumpy()).max() > 1e-4
        np.testing.assert_allclose(g.asnumpy(), w.asnumpy(), rtol=0, atol=1e-5)
