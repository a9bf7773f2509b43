"""Token choice on the host: repetition penalty, top-k, top-p, temperature, seeded draws."""
import numpy as np
import pytest

from petrun.infer.sampling import (SamplingConfig, _filter_row, apply_repetition_penalty,
                                   next_tokens)


def test_repetition_penalty_pushes_seen_tokens_down_only():
    logits = np.array([[2.0, -1.0, 0.5, 3.0]], np.float32)
    out = apply_repetition_penalty(logits, [[0, 1, 1]], 2.0)
    np.testing.assert_allclose(out, [[1.0, -2.0, 0.5, 3.0]])
    assert apply_repetition_penalty(logits, [[0]], 1.0) is not logits   # a copy either way
    # Greedy switches away from a repeated token once the penalty is large enough.
    cfg = SamplingConfig(repetition_penalty=1.5)
    assert next_tokens(np.array([[3.0, 2.5]], np.float32), [[0]], cfg)[0] == 1
    assert next_tokens(np.array([[3.0, 2.5]], np.float32), [[0]], SamplingConfig())[0] == 0


def test_top_k_and_top_p_filters():
    row = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert np.isfinite(_filter_row(row, 2, 1.0)).tolist() == [True, True, False, False]
    # Smallest most-likely set reaching top_p; the token crossing the threshold is kept.
    assert np.isfinite(_filter_row(row, 0, 0.7)).tolist() == [True, True, False, False]
    assert np.isfinite(_filter_row(row, 0, 0.81)).tolist() == [True, True, True, False]
    assert np.isfinite(_filter_row(row, 0, 0.5)).tolist() == [True, False, False, False]
    assert np.isfinite(_filter_row(row, 0, 1e-6)).sum() == 1
    # Both: top-k first, then the nucleus of what is left.
    assert np.isfinite(_filter_row(row, 3, 0.9)).tolist() == [True, True, True, False]


def test_sampling_follows_the_distribution_and_the_seed():
    probs = np.array([0.6, 0.3, 0.1, 0.0])
    logits = np.tile(np.log(probs + 1e-30), (4000, 1)).astype(np.float32)
    cfg = SamplingConfig(do_sample=True)
    draws = next_tokens(logits, [[]] * 4000, cfg, np.random.default_rng(0))
    freq = np.bincount(draws, minlength=4) / 4000
    assert freq[3] == 0
    np.testing.assert_allclose(freq[:3], probs[:3], atol=0.03)
    again = next_tokens(logits, [[]] * 4000, cfg, np.random.default_rng(0))
    np.testing.assert_array_equal(draws, again)
    # top_k 1 sampling is greedy; a low temperature is nearly greedy.
    noisy = np.random.default_rng(1).normal(size=(50, 20)).astype(np.float32)
    greedy = next_tokens(noisy, [[]] * 50, SamplingConfig())
    top1 = next_tokens(noisy, [[]] * 50, SamplingConfig(do_sample=True, top_k=1),
                       np.random.default_rng(2))
    cold = next_tokens(noisy, [[]] * 50, SamplingConfig(do_sample=True, temperature=1e-3),
                       np.random.default_rng(3))
    np.testing.assert_array_equal(top1, greedy)
    top2 = np.sort(noisy, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.05   # odds of the runner-up below e^-50
    assert clear.sum() > 40
    np.testing.assert_array_equal(cold[clear], greedy[clear])


@pytest.mark.parametrize("field,value", [("top_k", -1), ("top_p", 0.0), ("top_p", 1.5),
                                         ("temperature", -0.5), ("repetition_penalty", 0.0)])
def test_bad_values_are_named(field, value):
    problems = SamplingConfig(**{field: value}).check()
    assert [f for f, _ in problems] == [field]


def test_temperature_zero_means_greedy_and_cannot_sample():
    assert SamplingConfig(temperature=0.0).check() == []
    assert [f for f, _ in SamplingConfig(do_sample=True, temperature=0.0).check()] == ["temperature"]
    from types import SimpleNamespace

    from petrun.infer.recipe import _sampling
    sampling_model = SimpleNamespace(do_sample=True, top_k=0, top_p=1.0, repetition_penalty=1.0)
    cfg = _sampling(sampling_model, None, None, None, 0.0, None)   # --temperature 0
    assert cfg.do_sample is False and cfg.temperature == 1.0
    assert _sampling(sampling_model, None, None, None, None, None).do_sample is True
