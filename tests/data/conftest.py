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


_BPE_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Valkyria Chronicles III is a tactical role-playing game.",
    "Senjō no Valkyria 3 : Unrecorded Chronicles was released in 2011.",
    "The game began development in 2010, carrying over a large portion of the work.",
    "It met with positive sales in Japan, and was praised by both Japanese and western critics.",
] * 4


@pytest.fixture(scope="session")
def bpe_files(tmp_path_factory):
    """A tiny byte-level BPE trained here with `tokenizers` (no download): its tokenizer.json,
    and the same model as GPT2-style vocab.json + merges.txt. '<|endoftext|>' is id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("bpe")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_BPE_CORPUS, trainer=trainer)
    tok.save(str(folder / "tokenizer.json"))
    tok.model.save(str(folder))   # vocab.json + merges.txt
    return {"dir": str(folder), "tokenizer_json": str(folder / "tokenizer.json"),
            "vocab": str(folder / "vocab.json"), "merges": str(folder / "merges.txt")}
