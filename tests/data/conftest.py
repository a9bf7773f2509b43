"""Shared fixtures for the data tests: the bundled demo tokenizer and small tokenized datasets."""
from __future__ import annotations

import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_DIR = os.path.join(REPO, "data", "demo")


@pytest.fixture(scope="session")
def demo_dir() -> str:
    return DEMO_DIR


@pytest.fixture(scope="session")
def demo_tokenizer():
    from petrun.data.tokenizer import SentencePieceTokenizer

    return SentencePieceTokenizer(os.path.join(DEMO_DIR, "tokenizer.model"))


def _make_samples(n: int, length: int, with_labels: bool = True) -> list[dict[str, np.ndarray]]:
    """n distinct samples: input_ids start with 1000 + i so order can be read off token 0."""
    out = []
    for i in range(n):
        ids = (np.arange(length) + 1000 + i).astype(np.int32)
        sample = {"input_ids": ids}
        if with_labels:
            sample["labels"] = np.where(np.arange(length) % 3 == 0, -100, ids).astype(np.int32)
        out.append(sample)
    return out


@pytest.fixture
def make_samples():
    return _make_samples
