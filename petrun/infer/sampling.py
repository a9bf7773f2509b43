"""Choosing the next token from fp32 logits: repetition penalty, temperature, top-k, top-p.

Pure numpy on the host: one row of logits per sequence is small next to a forward pass, and the
random draws then come from a seeded numpy Generator, so sampled output is reproducible for a
given seed on any device. The order and meaning of the knobs follow MindFormers/HF generation:
the repetition penalty first (it applies to greedy decoding too), then temperature, top-k, top-p.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class SamplingConfig:
    do_sample: bool = False
    top_k: int = 0               # 0: no top-k cut
    top_p: float = 1.0           # 1.0: no nucleus cut
    temperature: float = 1.0
    repetition_penalty: float = 1.0   # 1.0: off; > 1 discourages tokens already in the sequence

    def check(self) -> list[tuple[str, str]]:
        """(field, problem) pairs; empty when the values make sense."""
        out = []
        if self.top_k < 0:
            out.append(("top_k", f"must be >= 0 (0 turns it off), got {self.top_k}"))
        if not 0.0 < self.top_p <= 1.0:
            out.append(("top_p", f"must be in (0, 1], got {self.top_p}"))
        if self.temperature < 0.0 or (self.do_sample and not self.temperature > 0.0):
            out.append(("temperature", f"must be > 0 when sampling (0 means greedy decoding), "
                                       f"got {self.temperature}"))
        if not self.repetition_penalty > 0.0:
            out.append(("repetition_penalty", f"must be > 0 (1.0 turns it off), got "
                                              f"{self.repetition_penalty}"))
        return out


def apply_repetition_penalty(logits: np.ndarray, history: Sequence[Sequence[int]],
                             penalty: float) -> np.ndarray:
    """Every token already in row b's history becomes less likely: positive logits are divided
    by `penalty`, negative ones multiplied (so the penalty always pushes down). Returns a copy."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if penalty == 1.0:
        return out
    for b, seen in enumerate(history):
        ids = np.unique(np.asarray(seen, dtype=np.int64))
        ids = ids[(ids >= 0) & (ids < out.shape[1])]
        vals = out[b, ids]
        out[b, ids] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def _filter_row(row: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Logits with everything outside the top-k / nucleus set to -inf (at least one survives)."""
    keep = np.isfinite(row)
    if 0 < top_k < row.size:
        kth = np.partition(row, row.size - top_k)[row.size - top_k]
        keep &= row >= kth   # ties at the k-th value all survive
    if top_p < 1.0:
        masked = np.where(keep, row, -np.inf)
        order = np.argsort(-masked, kind="stable")
        probs = _softmax(masked[order])
        # Keep the smallest prefix of most likely tokens whose mass reaches top_p; the token
        # that crosses the threshold is included, so the first token always is.
        before = np.cumsum(probs) - probs
        nucleus = np.zeros_like(keep)
        nucleus[order[before < top_p]] = True
        keep &= nucleus
    return np.where(keep, row, -np.inf)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = np.exp(x - np.max(x))
    return x / x.sum()


def next_tokens(logits: np.ndarray, history: Sequence[Sequence[int]], cfg: SamplingConfig,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """One token id per row of `logits` (B, vocab): greedy argmax, or a draw when do_sample."""
    scores = apply_repetition_penalty(logits, history, cfg.repetition_penalty)
    if not cfg.do_sample:
        return np.argmax(scores, axis=-1).astype(np.int32)
    rng = rng if rng is not None else np.random.default_rng()
    out = np.empty(scores.shape[0], dtype=np.int32)
    for b in range(scores.shape[0]):
        row = _filter_row(scores[b] / cfg.temperature, cfg.top_k, cfg.top_p)
        probs = _softmax(row)
        # Inverse-CDF draw: one uniform number per row keeps the stream easy to reproduce.
        idx = int(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right"))
        out[b] = idx if idx < probs.size else int(np.flatnonzero(probs)[-1])   # rounding
    return out
