"""Sharded safetensors as transformers writes them: `model.safetensors` when everything fits in one
shard, else `model-00001-of-0000N.safetensors` ... plus `model.safetensors.index.json`
({"metadata": {"total_size": bytes}, "weight_map": {tensor: file}}), which
`from_pretrained` follows.

Sizes read like transformers' `max_shard_size`: an int of bytes or "5GB" (10^9), "500MB", "20KB",
"2GiB" (2^30). Shards fill in tensor order; a tensor that would overflow a non-empty shard starts
the next one, and a tensor larger than the limit gets a shard of its own (huggingface_hub's
split_torch_state_dict_into_shards rule). The layout is fixed before any data is read, so each
shard's header is known and tensors stream through one at a time (petrun.ckpt.stream).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from petrun.ckpt import stream
from petrun.ckpt.stream import TensorInfo
from petrun.errors import UserError

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str, key: str = "--max-shard-size") -> int:
    """Bytes for 5_000_000_000, "5GB", "500MB", "2GiB", "20KB" (as transformers reads them)."""
    if isinstance(size, int) and size > 0:
        return size
    hit = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(size).upper())
    if not hit or hit.group(2) not in _UNITS or float(hit.group(1)) <= 0:
        raise UserError(f"cannot read the size {size!r}", key=key,
                        fix="give bytes or a number with a unit, e.g. 5GB, 500MB, 2GiB")
    return int(float(hit.group(1)) * _UNITS[hit.group(2)])


def split(layout: list[tuple[str, TensorInfo]], max_bytes: int) -> list[list[tuple[str, TensorInfo]]]:
    shards: list[list] = [[]]
    used = 0
    for name, info in layout:
        if shards[-1] and used + info.nbytes > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append((name, info))
        used += info.nbytes
    return shards


class ShardedSafetensorsWriter:
    """`write` each tensor of `layout` in order (the petrun.ckpt.hf.execute protocol); shards are
    opened one at a time, each written under a temporary name and renamed on commit."""

    def __init__(self, folder: str | Path, layout: Iterable[tuple[str, TensorInfo]],
                 max_bytes: int, metadata: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.layout = list(layout)
        self.shards = split(self.layout, max_bytes)
        n = len(self.shards)
        self.names = [WEIGHTS_NAME] if n == 1 else \
            [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.metadata = metadata
        self._index, self._left, self._writer = -1, 0, None
        self._done: list[Path] = []

    def write(self, name: str, array: np.ndarray, dtype: str) -> None:
        if self._left == 0:
            self._open_next()
        self._writer.write(name, array, dtype)
        self._left -= 1
        if self._left == 0:
            self._done.append(self._writer.commit())
            self._writer = None

    def _open_next(self) -> None:
        self._index += 1
        shard = self.shards[self._index]
        self._writer = stream.SafetensorsWriter(self.folder / self.names[self._index], shard,
                                                metadata=self.metadata)
        self._left = len(shard)

    def commit(self) -> list[Path]:
        """The files written (the index last, when there is one)."""
        if self._writer is not None or len(self._done) != len(self.shards):
            raise ValueError(f"{len(self._done)} of {len(self.shards)} shards were written")
        if len(self.shards) > 1:
            index = {"metadata": {"total_size": sum(i.nbytes for _, i in self.layout)},
                     "weight_map": {name: self.names[k] for k, shard in enumerate(self.shards)
                                    for name, _ in shard}}
            out = stream.AtomicFile(self.folder / INDEX_NAME)
            out.f.write((json.dumps(index, indent=2) + "\n").encode("utf-8"))
            self._done.append(out.commit())
        return list(self._done)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
