"""Loss and perplexity over a labelled dataset: `petrun eval`, and evaluation during training.

The data path is the training one (petrun.data.loader with the family's extra_tokens), and the
loss is the model's own training loss, so an eval number means what a training loss means.
Batches are weighted by how many target tokens their loss averages over, so the result is the
mean over every target token of the set (what HF computes when the whole set is one batch), and
perplexity = exp(loss).

The recipe calls it every eval_step_interval steps when do_eval is True:

    evaluator = Evaluator.from_config(cfg)        # once, in setup (opens and checks the data)
    result = evaluator.run(model)                  # leaves the model in the mode it found it
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from petrun.errors import UserError

EVAL_DIR_KEY = "eval_dataset.data_loader.dataset_dir"
IGNORE_INDEX = -100


@dataclass
class EvalResult:
    loss: float          # mean cross-entropy per target token
    perplexity: float
    tokens: int          # target tokens counted
    samples: int
    batches: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (f"eval loss {self.loss:.6f}, perplexity {self.perplexity:.4f} "
                f"({self.tokens} target tokens in {self.samples} samples, {self.seconds:.1f} s)")


def count_targets(input_ids: np.ndarray, labels: np.ndarray, extra_tokens: int,
                  pad_token_id: int | None) -> int:
    """Target tokens one batch's loss averages over, as the families' losses count them:
    extra_tokens 1 (Llama2, GPT2) shift inside and skip pad inputs; 0 (GLM2) counts labels."""
    if extra_tokens:
        keep = labels[:, 1:] != IGNORE_INDEX
        if pad_token_id is not None:
            keep &= input_ids[:, :-1] != pad_token_id
        return int(keep.sum())
    return int((labels != IGNORE_INDEX).sum())


def evaluate(model, batches: Iterable, *, extra_tokens: int, pad_token_id: int | None = None,
             max_batches: int | None = None) -> EvalResult:
    """Token-weighted loss of `model(input_ids, labels)` over (input_ids, labels) batches."""
    from mindspore import Tensor

    was_training = bool(getattr(model, "training", False))
    model.set_train(False)
    total, tokens, samples, count = 0.0, 0, 0, 0
    start = time.perf_counter()
    try:
        for input_ids, labels in batches:
            ids = np.asarray(input_ids, dtype=np.int32)
            lab = np.asarray(labels, dtype=np.int32)
            n = count_targets(ids, lab, extra_tokens, pad_token_id)
            if n:
                loss = float(model(Tensor(ids), Tensor(lab)).asnumpy())
                total += loss * n
                tokens += n
            samples += ids.shape[0]
            count += 1
            if max_batches is not None and count >= max_batches:
                break
    finally:
        model.set_train(was_training)
    if tokens == 0:
        raise UserError("the evaluation data has no target tokens (every label is -100)",
                        key=EVAL_DIR_KEY, fix="evaluate on labelled data")
    loss = total / tokens
    return EvalResult(loss=loss, perplexity=_exp(loss), tokens=tokens, samples=samples,
                      batches=count, seconds=time.perf_counter() - start)


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return float("inf")


class Evaluator:
    """Eval data opened and checked once; `run(model)` as often as needed."""

    def __init__(self, source, *, extra_tokens: int, pad_token_id: int | None,
                 max_batches: int | None = None):
        self.source = source
        self.extra_tokens = extra_tokens
        self.pad_token_id = pad_token_id
        self.max_batches = max_batches

    @classmethod
    def from_config(cls, cfg, *, max_batches: int | None = None) -> "Evaluator":
        """eval_dataset of a resolved config, read the way training reads train_dataset.

        Every rank evaluates the whole set (no sharding), so each reports the same number.
        """
        from petrun.data.loader import open_dataset
        from petrun.data.ondemand import RawText
        from petrun.models.registry import arch_entry, build_config, embedding_rows

        dataset_dir = cfg.get(EVAL_DIR_KEY)
        if not dataset_dir:
            raise UserError("no evaluation data: the dataset path is empty", key=EVAL_DIR_KEY,
                            file=cfg.origin(EVAL_DIR_KEY),
                            fix="pass --eval_dataset_dir PATH (a .mindrecord file or folder, or "
                                "a tokenized .jsonl with input_ids/labels)")
        model_cfg = build_config(cfg.get("model"))
        extra = arch_entry(cfg.get("model.arch.type")).extra_tokens
        batch_size = int(cfg.get("eval_dataset.batch_size") or cfg.get("runner_config.batch_size")
                         or 1)
        source = open_dataset(dataset_dir, seq_length=int(model_cfg.seq_length),
                              batch_size=batch_size, extra_tokens=extra,
                              columns=["input_ids", "labels"], shuffle=False,
                              drop_remainder=bool(cfg.get("eval_dataset.drop_remainder", False)),
                              key=EVAL_DIR_KEY, raw=RawText.from_config(cfg, "eval_dataset"),
                              vocab_size=embedding_rows(model_cfg))
        return cls(source, extra_tokens=extra, pad_token_id=_pad_id(model_cfg),
                   max_batches=max_batches)

    def batches(self):
        for i, (input_ids, labels) in enumerate(
                self.source.epoch(1).create_tuple_iterator(output_numpy=True)):
            self.source.check_batch((input_ids, labels), f"eval batch {i + 1}")
            yield input_ids, labels

    def run(self, model) -> EvalResult:
        return evaluate(model, self.batches(), extra_tokens=self.extra_tokens,
                        pad_token_id=self.pad_token_id, max_batches=self.max_batches)


def _pad_id(model_cfg) -> int | None:
    # Only the shifting families (extra_tokens 1) mask pad inputs; GLM2 ignores this.
    pad = getattr(model_cfg, "pad_token_id", None)
    return None if pad is None else int(pad)
