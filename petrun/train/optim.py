"""Optimizer construction: AdamW over trainable parameters with MindFormers' decay groups."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from petrun.errors import UserError

ADAMW_TYPES = {"AdamWeightDecay", "FP32StateAdamWeightDecay", "FusedAdamWeightDecay", "AdamW", "adamw"}


def build_optimizer(params: list, cfg: Mapping, lr: np.ndarray):
    """AdamWeightDecay; 1-D parameters and biases go in a no-decay group (MindFormers' rule).

    `lr` is the per-step schedule; the optimizer picks the value for its global step. On CPU the
    parameters are fp32, so moments are fp32 too (what FP32StateAdamWeightDecay guarantees).
    """
    import mindspore as ms
    from mindspore import nn

    kind = cfg.get("type", "AdamWeightDecay")
    if kind not in ADAMW_TYPES:
        raise UserError(f"unsupported optimizer {kind!r}", key="optimizer.type",
                        fix=f"use one of {', '.join(sorted(ADAMW_TYPES))}")
    if not params:
        raise UserError("no trainable parameters: nothing to optimize", key="model.model_config.pet_config",
                        fix="check target_modules, or drop pet_config for a full finetune")
    wd = float(cfg.get("weight_decay", 0.0) or 0.0)
    # Parameters compare elementwise under ==, so split by a predicate, never by membership.
    is_decay = [len(p.shape) > 1 and not p.name.endswith(".bias") for p in params]
    decay = [p for p, d in zip(params, is_decay) if d]
    no_decay = [p for p, d in zip(params, is_decay) if not d]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": wd})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return nn.AdamWeightDecay(groups, learning_rate=ms.Tensor(lr), beta1=float(cfg.get("beta1", 0.9)),
                              beta2=float(cfg.get("beta2", 0.999)), eps=float(cfg.get("eps", 1e-8)))
