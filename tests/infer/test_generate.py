"""Generation with petrun's own models (random weights, no torch): the KV cache (compiled
fixed-size and PyNative growing) against the no-cache path, left-padded batches against single
prompts, P-Tuning v2 prefixes in the cache, eos, sampling, LoRA live vs merged."""
import numpy as np
import pytest

from petrun.errors import UserError
from petrun.infer.generate import GenerationConfig, attention_mask, generate, positions_of
from petrun.infer.sampling import SamplingConfig
from tests.infer import infer_helpers as ih

NEW = 32      # new tokens where cache and no-cache are compared (P-Tuning v2 acceptance)
FAST = 16     # the plain case, which test_generate_parity.py also runs at 32 against HF
GROWING = dict(jit=False)     # PyNative steps, cache grown by concatenation
NO_CACHE = dict(use_cache=False)


def three_ways(net, rows, new, **kw):
    """Tokens from the compiled fixed-size cache, the growing cache and no cache."""
    return [generate(net, rows, GenerationConfig(max_new_tokens=new, **extra), **kw)
            for extra in ({}, GROWING, NO_CACHE)]
SHORT = 10    # where a greedy run is compared with the start of a longer one


@pytest.fixture(scope="module", params=ih.FAMILIES)
def family_net(request):
    return request.param, ih.petrun_model(request.param, seed=11)


def _kv_layout(net):
    cfg = net.config
    if hasattr(cfg, "multi_query_group_num"):
        return cfg.num_layers, cfg.kv_heads, cfg.head_dim
    return cfg.num_layers, getattr(cfg, "kv_heads", cfg.num_heads), cfg.head_dim


def random_prefix(net, length=4, batch=1, seed=0, scale=1.0):
    """One (2, batch, n_kv_heads, P, head_dim) prefix per layer, as P-Tuning v2 produces."""
    layers, n_kv, dim = _kv_layout(net)
    rng = np.random.default_rng(seed)
    return [rng.normal(0, scale, (2, batch, n_kv, length, dim)).astype(np.float32)
            for _ in range(layers)]


def test_prefill_logits_equal_the_training_forward(family_net):
    """decode() over a whole unpadded prompt is construct() (the training path), with and
    without a prefix: the incremental path adds no numerics of its own."""
    import mindspore as ms
    _, net = family_net
    ids = np.array(ih.prompts((7,), seed=5), np.int32)
    valid = np.ones_like(ids, bool)
    for prefix in (None, random_prefix(net, 3)):
        want = net(ms.Tensor(ids), None,
                   None if prefix is None else [ms.Tensor(p) for p in prefix]).asnumpy()
        past = None if prefix is None else [(ms.Tensor(p[0]), ms.Tensor(p[1])) for p in prefix]
        plen = 0 if prefix is None else 3
        key_valid = np.concatenate([np.ones((1, plen), bool), valid], axis=1)
        got, presents = net.decode(ms.Tensor(ids), ms.Tensor(positions_of(valid)),
                                   ms.Tensor(attention_mask(key_valid, plen, 7)), past)
        np.testing.assert_allclose(got.asnumpy(), want, rtol=0, atol=1e-5)
        layers, n_kv, dim = _kv_layout(net)
        assert len(presents) == layers
        # the cache keeps n_kv_heads heads and the prefix in front of the tokens
        assert tuple(presents[0][0].shape) == (1, n_kv, plen + 7, dim)


def test_cache_equals_no_cache_and_batch_equals_single(family_net):
    family, net = family_net
    rows = ih.prompts((5, 9, 3), seed=3)
    cached, growing, uncached = three_ways(net, rows, FAST)
    assert cached.jit and not growing.jit
    assert cached.tokens == growing.tokens == uncached.tokens
    assert all(len(t) == FAST for t in cached.tokens) and cached.finish_reasons == ["length"] * 3
    assert max(len(set(t)) for t in cached.tokens) >= 8, "degenerate output tests nothing"
    # left padding changes nothing for a row: each padded row alone gives the same tokens
    # (greedy, so a shorter run is the start of the longer one)
    for row, want in list(zip(rows, cached.tokens))[::2]:
        alone = generate(net, [row], GenerationConfig(max_new_tokens=SHORT, **GROWING)).tokens[0]
        assert alone == want[:SHORT], family


def test_ptuning2_prefix_in_the_cache(family_net):
    """A P-Tuning v2 prefix given at the first step stays at the front of the cache: cached and
    uncached generation agree, batched rows (left-padded) agree with single ones, and the
    prefix really steers the output."""
    family, net = family_net
    rows = ih.prompts((6, 4), seed=8)
    prefix = random_prefix(net, length=5, seed=2, scale=2.0)
    # (the compiled fixed-size cache with a prefix: test_pet_prefix_methods_generate_...)
    cached = generate(net, rows, GenerationConfig(max_new_tokens=NEW, **GROWING),
                      prefix_key_values=prefix)
    uncached = generate(net, rows, GenerationConfig(max_new_tokens=NEW, **NO_CACHE),
                        prefix_key_values=prefix)
    assert cached.tokens == uncached.tokens
    short = GenerationConfig(max_new_tokens=SHORT, **GROWING)
    # the left-padded row alone
    single = generate(net, rows[1:], short, prefix_key_values=prefix)
    assert single.tokens[0] == cached.tokens[1][:SHORT]
    plain = generate(net, rows, short)
    assert [t[:SHORT] for t in cached.tokens] != plain.tokens, f"{family}: the prefix did nothing"


@pytest.mark.parametrize("family,pet_config", [
    ("llama2", {"pet_type": "ptuning2", "pre_seq_len": 4}),
    ("glm2", {"pet_type": "ptuning2", "pre_seq_len": 4}),
    ("gpt2", {"pet_type": "prefixtuning", "prefix_token_num": 3, "mid_dim": 16}),
])
def test_pet_prefix_methods_generate_with_the_cache(family, pet_config):
    """The real P-Tuning v2 / prefix-tuning wrappers (petrun.pet) feed their prefix through
    prefix_key_values(batch): cache and no cache agree, and the trained prefix matters."""
    import mindspore as ms

    from petrun.pet import apply_pet

    net = ih.petrun_model(family, seed=11)
    model = apply_pet(net, pet_config).model
    rng = np.random.default_rng(0)
    for p in model.trainable_params():   # a "trained" prefix encoder
        p.set_data(ms.Tensor(rng.normal(0, 1.0, p.shape).astype(np.float32)))
    rows = ih.prompts((5, 8), seed=3)
    cached = generate(model, rows, GenerationConfig(max_new_tokens=NEW))
    uncached = generate(model, rows, GenerationConfig(max_new_tokens=NEW, **NO_CACHE))
    assert cached.tokens == uncached.tokens
    base = generate(net, rows, GenerationConfig(max_new_tokens=SHORT, **GROWING))
    assert [t[:SHORT] for t in cached.tokens] != base.tokens


def test_prefix_found_on_the_model():
    """PET prefix methods expose prefix_key_values(batch_size); generate() asks for it."""
    net = ih.petrun_model("llama2", seed=4)
    prefix = random_prefix(net, length=2, seed=9, scale=2.0)
    asked = []

    def provider(batch_size):
        asked.append(batch_size)
        return prefix

    rows = ih.prompts((5, 6), seed=1)
    want = generate(net, rows, GenerationConfig(max_new_tokens=6), prefix_key_values=prefix)
    net.prefix_key_values = provider
    try:
        got = generate(net, rows, GenerationConfig(max_new_tokens=6))
    finally:
        del net.prefix_key_values
    assert asked == [2] and got.tokens == want.tokens


def test_rows_stop_at_eos_independently():
    net = ih.petrun_model("gpt2", seed=11)
    rows = ih.prompts((5, 9), seed=3)
    free = generate(net, rows, GenerationConfig(max_new_tokens=12)).tokens
    eos = free[0][5]
    stop = free[0].index(eos)
    got = generate(net, rows, GenerationConfig(max_new_tokens=12, eos_token_ids=(eos,)))
    assert got.tokens[0] == free[0][:stop + 1] and got.finish_reasons[0] == "eos"
    if eos in free[1]:
        assert got.tokens[1] == free[1][:free[1].index(eos) + 1]
    else:
        assert got.tokens[1] == free[1] and got.finish_reasons[1] == "length"


def test_sampling_is_seeded():
    net = ih.petrun_model("llama2", seed=11)
    rows = ih.prompts((5,), seed=3)
    sample = SamplingConfig(do_sample=True, top_k=20, top_p=0.95, temperature=1.5)
    a = generate(net, rows, GenerationConfig(max_new_tokens=6, sampling=sample, seed=1))
    b = generate(net, rows, GenerationConfig(max_new_tokens=6, sampling=sample, seed=1))
    c = generate(net, rows, GenerationConfig(max_new_tokens=6, sampling=sample, seed=2))
    assert a.tokens == b.tokens and a.tokens != c.tokens
    greedy = generate(net, rows, GenerationConfig(max_new_tokens=6))
    top1 = generate(net, rows, GenerationConfig(
        max_new_tokens=6, sampling=SamplingConfig(do_sample=True, top_k=1), seed=5))
    assert top1.tokens == greedy.tokens


def test_lora_live_equals_merged():
    import mindspore as ms

    from petrun.pet import apply_pet
    from petrun.pet.lora import merge, unmerge

    net = ih.petrun_model("llama2", seed=11)
    rows = ih.prompts((5, 8), seed=3)
    base = generate(net, rows, GenerationConfig(max_new_tokens=SHORT)).tokens
    apply_pet(net, {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8,
                    "target_modules": ".*wq|.*wv"})
    rng = np.random.default_rng(0)
    for p in net.get_parameters():
        if "lora_b" in p.name:   # B starts at zero; make the adapter do something
            p.set_data(ms.Tensor(rng.normal(0, 0.3, p.shape).astype(np.float32)))
    live = generate(net, rows, GenerationConfig(max_new_tokens=SHORT)).tokens
    assert live != base
    # the compiled step seen before the injection must not be reused for the new cell tree
    assert live == generate(net, rows, GenerationConfig(max_new_tokens=SHORT, **GROWING)).tokens
    assert merge(net) > 0
    try:
        merged = generate(net, rows, GenerationConfig(max_new_tokens=SHORT)).tokens
    finally:
        unmerge(net)
    assert merged == live


def test_compiled_step_leaves_the_model_alone():
    net = ih.petrun_model("gpt2", seed=2)
    names = [p.name for p in net.get_parameters()]
    cells = [n for n, _ in net.cells_and_names()]
    generate(net, ih.prompts((4,)), GenerationConfig(max_new_tokens=3))
    assert [p.name for p in net.get_parameters()] == names
    assert [n for n, _ in net.cells_and_names()] == cells


def test_compiled_steps_are_reused_and_never_shared_by_live_caches():
    """The compiled step holds its cache in Parameters: the next generate() of the same shape
    reuses it (no second compile), while a cache still in use (a chat) never lends it out."""
    from petrun.infer import kv_cache as gen

    net = ih.petrun_model("gpt2", seed=3)
    rows, config = ih.prompts((5,)), GenerationConfig(max_new_tokens=4)
    want = generate(net, rows, config).tokens

    def steps():
        return [s for pool in net.__dict__[gen._STEPS_ATTR][1].values() for s in pool]

    first = steps()
    assert len(first) == 1
    assert generate(net, rows, config).tokens == want
    assert steps() == first                       # reused, not compiled again
    chat = gen.KVCache.empty(net, 8)              # the generate() cache's size: 5 + 4 - 1
    alone = generate(net, [rows[0][:3]], GenerationConfig(max_new_tokens=2), cache=chat).tokens
    assert chat.step is first[0]
    assert generate(net, rows, config).tokens == want
    assert len(steps()) == 2 and chat.step is first[0]   # the live chat kept its own
    again = gen.KVCache.empty(net, 8)
    assert generate(net, [rows[0][:3]], GenerationConfig(max_new_tokens=2),
                    cache=again).tokens == alone


def test_length_beyond_the_positions_is_a_user_error():
    net = ih.petrun_model("gpt2", seed=1)
    with pytest.raises(UserError, match="needs 70 positions; the model has 64"):
        generate(net, [list(range(3, 13))], GenerationConfig(max_new_tokens=60))
    with pytest.raises(UserError, match="at least one token"):
        generate(net, [[5], []], GenerationConfig(max_new_tokens=2))
