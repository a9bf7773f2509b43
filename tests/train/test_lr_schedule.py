"""LR schedules against MindFormers' formulas written out by hand (reference/mindformers.md §8.2)."""
import math

import numpy as np
import pytest

from petrun.errors import UserError
from petrun.train.lr import schedule


def test_cosine_with_warmup_matches_formula():
    cfg = {"type": "CosineWithWarmUpLR", "learning_rate": 1e-3, "lr_end": 1e-5, "warmup_ratio": 0.1}
    lr = schedule(cfg, 100)
    assert lr.shape == (100,) and lr.dtype == np.float32
    assert lr[0] == 0.0 and lr[5] == pytest.approx(1e-3 * 5 / 10)
    for step in (10, 37, 99):
        progress = (step - 10) / 90
        want = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * progress))
        assert lr[step] == pytest.approx(want, rel=1e-6)


def test_warmup_steps_and_linear_decay():
    lr = schedule({"type": "linear", "learning_rate": 2.0, "warmup_steps": 4, "lr_end": 0.0}, 12)
    assert list(lr[:4]) == [0.0, 0.5, 1.0, 1.5]
    assert lr[4] == pytest.approx(2.0) and lr[8] == pytest.approx(1.0) and lr[11] == pytest.approx(0.25)


def test_polynomial_and_constant_and_aliases():
    poly = schedule({"type": "polynomial", "learning_rate": 1.0, "lr_end": 0.1, "power": 2.0,
                     "warmup_steps": 0}, 10)
    assert poly[5] == pytest.approx((1.0 - 0.1) * (1 - 0.5) ** 2 + 0.1)
    const = schedule({"type": "ConstantWarmUpLR", "learning_rate": 0.3, "warmup_steps": 2}, 5)
    np.testing.assert_allclose(const, [0.0, 0.15, 0.3, 0.3, 0.3], rtol=1e-6)


def test_total_steps_from_config_wins_over_run_length():
    # MindFormers: total_steps -1 means "from the data"; a positive value fixes the curve length.
    short = schedule({"type": "linear", "learning_rate": 1.0, "total_steps": 10, "warmup_steps": 0}, 20)
    assert short[5] == pytest.approx(0.5) and short[15] == 0.0


def test_unknown_type_is_a_user_error():
    with pytest.raises(UserError, match="lr_schedule.type"):
        schedule({"type": "exponential"}, 3)


def test_lowercase_cosine_is_mindformers_cosine_and_passes_the_schema():
    from petrun.config import load_config
    from tests.conftest import ROOT
    cfg = {"type": "CosineWithWarmUpLR", "learning_rate": 1e-3, "warmup_ratio": 0.1}
    np.testing.assert_array_equal(schedule({**cfg, "type": "cosine"}, 20), schedule(cfg, 20))
    loaded = load_config(ROOT / "configs/llama2/lora_llama2_tiny.yaml", ["lr_schedule.type=cosine"])
    assert loaded.get("lr_schedule.type") == "cosine"
