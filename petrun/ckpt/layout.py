"""The output folder a run writes, in one place (MindFormers' layout, so its tools find things):

    <output_dir>/checkpoint/rank_<r>/           adapter checkpoints, manifests, `latest`, config.yaml
    <output_dir>/checkpoint_network/rank_<r>/   whole-network saves (CheckpointMonitor's
                                                save_network_params)
    <output_dir>/log/rank_<r>/metrics.jsonl     per-step records
    <output_dir>/strategy/                      the strategy files auto_trans_ckpt computes

What goes inside a checkpoint folder (file names, manifests, `latest`) is ckpt/store.py's.
"""
from __future__ import annotations

from pathlib import Path

CONFIG_NAME = "config.yaml"      # the resolved config, beside the checkpoints it produced
METRICS_NAME = "metrics.jsonl"


def checkpoint_dir(output_dir: str | Path, rank: int) -> Path:
    return Path(output_dir) / "checkpoint" / f"rank_{rank}"


def network_dir(output_dir: str | Path, rank: int) -> Path:
    return Path(output_dir) / "checkpoint_network" / f"rank_{rank}"


def log_dir(output_dir: str | Path, rank: int) -> Path:
    return Path(output_dir) / "log" / f"rank_{rank}"


def strategy_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "strategy"
