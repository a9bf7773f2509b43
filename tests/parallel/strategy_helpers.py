"""Hand-built strategy files and shards for the transform tests, written straight with MindSpore's
protobuf module (independent of petrun.parallel.strategy_file, which the tests check)."""
from __future__ import annotations

from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore.train import node_strategy_pb2 as pb


def hand_strategy(path, entries: dict, stage: int = 0) -> Path:
    """entries: {name: (dev_matrix, tensor_map[, opt_size, opt_step])}."""
    m = pb.ParallelStrategyMap()
    m.current_stage = stage
    item = m.parallel_strategy_item.add()
    item.node_name = "hand"
    item.parallel_strategys.stage = stage
    item.parallel_strategys.parallel_strategy.add().dim.extend([1])
    for name, spec in entries.items():
        dev, tmap = spec[0], spec[1]
        size, step = (spec[2], spec[3]) if len(spec) > 2 else (0, 0)
        li = m.parallel_layout_item.add()
        li.param_name = name
        lay = li.parallel_layouts
        lay.dev_matrix.add().dim.extend(dev)
        lay.tensor_map.add().dim.extend(tmap)
        lay.param_split_shape.add()
        lay.field = 0
        lay.opt_weight_shard_size = size
        lay.opt_weight_shard_step = step
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(m.SerializeToString())
    return path


def save(path, tensors: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(np.ascontiguousarray(a))} for n, a in tensors.items()],
                       str(path))
    return path


def load(path) -> dict:
    return {n: p.asnumpy() for n, p in ms.load_checkpoint(str(path)).items()}


def write_shards(root, pieces: dict[int, dict], name: str = "shard.ckpt") -> Path:
    """pieces: {rank: {tensor name: array}} → root/rank_<r>/<name>."""
    for r, tensors in pieces.items():
        save(Path(root) / f"rank_{r}" / name, tensors)
    return Path(root)


def rank_file(root, r) -> Path:
    files = sorted((Path(root) / f"rank_{r}").glob("*.ckpt"))
    assert len(files) == 1, files
    return files[0]
