"""Packing (`train_dataset.packing: true`) and length bucketing, on tokenized samples.

Packing puts several short samples into one row so padding stops costing compute. Attention stays
inside each sample: every token carries a segment id (1, 2, ... per sample, 0 for padding) and a
position restarting at 0, and the model's mask allows key k for query q only when they share a
segment and k <= q. So a packed row computes exactly what its samples compute on their own.

For the families whose model shifts labels itself (extra_tokens 1: Llama2, GPT2) the first token
of each sample is never a target, so its label becomes -100 in the packed row: otherwise the
previous sample's last token would be asked to predict it across the boundary.

Packing is deterministic (first-fit decreasing over the source order), done once when the data
is opened; epochs then shuffle packed rows, so resume cursors count rows as before.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = -100


def real_length(input_ids: np.ndarray, labels: np.ndarray, pad_id: int | None) -> int:
    """Tokens before the trailing padding: padding is pad_id input with an ignored label."""
    ids = np.asarray(input_ids)
    lab = np.asarray(labels)
    pad = (lab == IGNORE) if pad_id is None else ((ids == pad_id) & (lab == IGNORE))
    keep = np.nonzero(~pad)[0]
    return int(keep[-1]) + 1 if keep.size else 0


@dataclass
class Packed:
    input_ids: np.ndarray      # [rows, row_len] int32
    labels: np.ndarray         # [rows, row_len] int32
    position_ids: np.ndarray   # [rows, row_len] int32, restarting at 0 per sample
    segment_ids: np.ndarray    # [rows, row_len] int32, 1.. per sample, 0 = padding
    samples: int
    useful_before: float       # fraction of real tokens in the padded rows
    useful_after: float        # ... and in the packed rows

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    def summary(self) -> str:
        return (f"packing: {self.samples} samples into {self.rows} rows; useful tokens "
                f"{self.useful_before:.0%} → {self.useful_after:.0%}")


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of sample indices, each summing to at most `capacity` (stable: ties keep order)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    for b in bins:
        b.sort()    # samples keep their source order inside a row, rows by their first sample
    return sorted(bins)


def pack(input_ids: np.ndarray, labels: np.ndarray, *, pad_id: int, shift_in_model: bool) -> Packed:
    """Pack padded [n, row_len] samples into as few [rows, row_len] rows as fit."""
    input_ids = np.asarray(input_ids, np.int32)
    labels = np.asarray(labels, np.int32)
    n, row_len = input_ids.shape
    lengths = [real_length(input_ids[i], labels[i], pad_id) for i in range(n)]
    kept = [i for i in range(n) if lengths[i] > 0]
    bins = first_fit_decreasing([lengths[i] for i in kept], row_len)
    rows = len(bins)
    ids = np.full((rows, row_len), pad_id, np.int32)
    lab = np.full((rows, row_len), IGNORE, np.int32)
    pos = np.zeros((rows, row_len), np.int32)
    seg = np.zeros((rows, row_len), np.int32)
    for r, members in enumerate(bins):
        at = 0
        for s, j in enumerate(members, 1):
            i = kept[j]
            m = lengths[i]
            ids[r, at:at + m] = input_ids[i, :m]
            lab[r, at:at + m] = labels[i, :m]
            if shift_in_model:
                lab[r, at] = IGNORE
            pos[r, at:at + m] = np.arange(m)
            seg[r, at:at + m] = s
            at += m
    real = float(sum(lengths))
    return Packed(ids, lab, pos, seg, samples=len(kept),
                  useful_before=real / max(n * row_len, 1),
                  useful_after=real / max(rows * row_len, 1))


def block_causal_mask(segment_ids: np.ndarray) -> np.ndarray:
    """[B, S, S] bool: query q may attend key k iff same non-zero segment and k <= q.
    Padding (segment 0) attends to itself only, so its softmax row stays finite."""
    seg = np.asarray(segment_ids)
    same = seg[:, :, None] == seg[:, None, :]
    causal = np.tril(np.ones((seg.shape[1], seg.shape[1]), bool))
    mask = same & causal[None]
    pad = seg == 0
    eye = np.eye(seg.shape[1], dtype=bool)[None]
    return np.where(pad[:, :, None], eye, mask)


def bucket_order(lengths: list[int], batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Length bucketing: a shuffled order in which each batch holds samples of similar length.

    Samples are shuffled, cut into windows of 50 batches, sorted by length inside each window and
    batched; then the batches are shuffled. The lighter alternative to packing: less padding
    compute where the model pads to the longest sample of a batch, no change to attention.
    """
    n = len(lengths)
    order = rng.permutation(n)
    window = batch_size * 50
    batches = []
    for start in range(0, n, window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    rest = [i for b in batches if len(b) < batch_size for i in b]
    picks = rng.permutation(len(full))
    return np.array([i for p in picks for i in full[p]] + rest, dtype=np.int64)
