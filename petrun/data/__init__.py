"""Data: tokenizers, record formats (alpaca, ShareGPT, messages, AdvertiseGen, wikitext →
MindRecord), the chat templates (templates.py), and the training input pipeline.

No MindSpore import at package import time; the functions that need it import it themselves.
"""
from __future__ import annotations

from petrun.data.loader import (DATASET_DIR_KEY, build_dataset, check_dataset, dataset_size,
                                inspect_dataset)
from petrun.data.tokenizer import SentencePieceTokenizer, Tokenizer, load_tokenizer

__all__ = ["DATASET_DIR_KEY", "build_dataset", "check_dataset", "dataset_size", "inspect_dataset",
           "SentencePieceTokenizer", "Tokenizer", "load_tokenizer"]
