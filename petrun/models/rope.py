"""Rotary position tables (numpy): what RotaryEmbedding turns into constants of the graph."""
from __future__ import annotations

import numpy as np

from petrun.errors import UserError

EXTEND_METHODS = ("None", "PI", "NTK")


def rope_tables(head_dim: int, max_positions: int, theta: float = 10000.0,
                extend_method: str = "None", scaling_factor: float = 1.0):
    """cos and sin tables, float32 numpy arrays of shape [max_positions, head_dim].

    extend_method: "None"; "PI" (position interpolation: positions / scaling_factor);
    "NTK" (base theta * scaling_factor ** (d / (d - 2))).
    """
    if extend_method not in EXTEND_METHODS:
        raise UserError(f"unknown extend_method {extend_method!r}; expected one of "
                        f"{', '.join(EXTEND_METHODS)}", key="model.model_config.extend_method")
    if head_dim % 2:
        raise UserError(f"rotary embedding needs an even head_dim, got {head_dim}",
                        key="model.model_config.hidden_size")
    base = float(theta)
    positions = np.arange(max_positions, dtype=np.float64)
    if extend_method == "NTK":
        base = base * float(scaling_factor) ** (head_dim / (head_dim - 2))
    elif extend_method == "PI":
        positions = positions / float(scaling_factor)
    inv_freq = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    freqs = np.outer(positions, inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)
