"""A conversation kept in one KV cache across turns (petrun.infer.kv_cache.KVCache, what
`petrun chat` uses), for the three families, with and without a P-Tuning v2 prefix in the cache.

Oracle: the model's no-cache forward of the whole conversation (construct(), the training path):
the logits of a later turn prefilled on top of the kept cache, and its greedy tokens, equal those
of the full forward run over every token of the conversation again."""
import numpy as np
import pytest

from petrun.errors import UserError
from petrun.infer.generate import GenerationConfig, generate
from petrun.infer.kv_cache import KVCache
from tests.infer import infer_helpers as ih
from tests.infer.test_generate import random_prefix

NEW = 6


@pytest.fixture(scope="module", params=ih.FAMILIES)
def family_net(request):
    return request.param, ih.petrun_model(request.param, seed=11)


def full_logits(net, ids, prefix=None):
    """(len(ids), vocab) fp32 logits of construct() over the whole sequence, no cache."""
    import mindspore as ms

    out = net(ms.Tensor(np.array([ids], np.int32)), None,
              None if prefix is None else [ms.Tensor(p) for p in prefix])
    return out.asnumpy()[0]


def greedy_without_cache(net, ids, new, prefix=None):
    ids, out = list(ids), []
    for _ in range(new):
        out.append(int(np.argmax(full_logits(net, ids, prefix)[-1])))
        ids.append(out[-1])
    return out


def user_turn(seed, n=4):
    return ih.prompts((n,), seed=seed)[0]


PREFIX = pytest.mark.parametrize("with_prefix", [False, True], ids=["plain", "ptuning2-prefix"])


@PREFIX
def test_a_turn_prefilled_on_the_kept_cache_gives_the_full_forward_logits(family_net,
                                                                         with_prefix):
    family, net = family_net
    prefix = random_prefix(net, 3, seed=4) if with_prefix else None
    cache = KVCache.empty(net, ih.POSITIONS, prefix_key_values=prefix)
    assert cache.prefix_len == (3 if with_prefix else 0)
    first = user_turn(1, 7)
    answer = generate(net, [first], GenerationConfig(max_new_tokens=NEW), cache=cache).tokens[0]
    # The last answer token was never fed: the next turn starts with it.
    new = [answer[-1]] + user_turn(2)
    written = cache.next_slot
    logits = cache.extend(net, np.array([new], np.int32))
    want = full_logits(net, first + answer + new[1:], prefix)[-1]
    np.testing.assert_allclose(logits[0], want, rtol=0, atol=1e-4, err_msg=family)
    # only the new tokens were run and written, after the ones already there
    assert written == cache.prefix_len + len(first) + NEW - 1
    assert cache.next_slot == written + len(new)


@PREFIX
def test_greedy_turns_on_the_kept_cache_equal_the_full_forward(family_net, with_prefix):
    family, net = family_net
    prefix = random_prefix(net, 3, seed=4) if with_prefix else None
    config = GenerationConfig(max_new_tokens=NEW)        # greedy, no eos: NEW tokens per turn
    cache = KVCache.empty(net, ih.POSITIONS, prefix_key_values=prefix)
    fed, new, seen = [], user_turn(1, 7), set()
    for turn in range(3):
        conversation = fed + new
        answer = generate(net, [new], config, cache=cache, history=[fed]).tokens[0]
        assert answer == greedy_without_cache(net, conversation, NEW, prefix), (family, turn)
        fed = conversation + answer[:-1]
        assert cache.next_slot - cache.prefix_len == len(fed)
        new = [answer[-1]] + user_turn(10 + turn)
        seen.update(answer)
    assert len(seen) > 5, "degenerate output tests nothing"


def test_clear_forgets_the_conversation(family_net):
    """After clear() (what /reset does) the first turn is answered as by a fresh cache."""
    _, net = family_net
    config = GenerationConfig(max_new_tokens=NEW)
    fresh = KVCache.empty(net, ih.POSITIONS)
    want = generate(net, [user_turn(8)], config, cache=fresh).tokens[0]
    cache = KVCache.empty(net, ih.POSITIONS)
    first = generate(net, [user_turn(1, 7)], config, cache=cache).tokens[0]
    generate(net, [[first[-1]] + user_turn(2)], config, cache=cache)
    cache.clear()
    assert cache.next_slot == 0
    assert generate(net, [user_turn(8)], config, cache=cache).tokens[0] == want


def test_a_turn_that_does_not_fit_is_refused_and_changes_nothing(family_net):
    _, net = family_net
    cache = KVCache.empty(net, 16)
    generate(net, [user_turn(1, 7)], GenerationConfig(max_new_tokens=4), cache=cache)
    before = cache.next_slot
    with pytest.raises(UserError, match="do not fit in the 6 free places"):
        generate(net, [user_turn(2, 5)], GenerationConfig(max_new_tokens=3), cache=cache)
    assert cache.next_slot == before
