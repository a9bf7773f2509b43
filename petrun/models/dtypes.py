"""Config dtype names → MindSpore dtypes, with the CPU bfloat16 fallback in one place.

MindSpore has no bfloat16 compute kernels on CPU (reference/feasibility.md §1a): MatMul, Softmax,
Gather and the reductions all reject it, so a bf16 model could be built but never run. Rather than
fail, CPU runs compute in float32 and say so once; on Ascend the configured dtype is kept.
"""
from __future__ import annotations

import logging
from typing import Mapping

from petrun.errors import UserError

log = logging.getLogger("petrun")

_NAMES = ("float32", "float16", "bfloat16")
_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def canonical_dtype_name(name: str, key: str | None = None) -> str:
    """'fp16' / 'float16' / mstype.float16 → 'float16'; anything else is a UserError."""
    text = str(name).lower()
    text = text.rsplit(".", 1)[-1]  # "mindspore.float16" or "mstype.float16"
    text = _ALIASES.get(text, text)
    if text not in _NAMES:
        raise UserError(f"unknown dtype {name!r}; expected one of {', '.join(_NAMES)}", key=key)
    return text


def to_ms_dtype(name: str):
    """Map a canonical dtype name to the MindSpore dtype, without any device fallback."""
    import mindspore as ms

    return {"float32": ms.float32, "float16": ms.float16, "bfloat16": ms.bfloat16}[
        canonical_dtype_name(name)]


def resolve_dtypes(names: Mapping[str, str], device_target: str | None = None,
                   key_prefix: str = "model.model_config") -> dict:
    """Resolve {field: dtype name} to {field: MindSpore dtype} for `device_target`.

    On CPU every bfloat16 field becomes float32 and ONE warning names them all, so a config written
    for Ascend still runs on a laptop without a wall of repeated messages.
    """
    import mindspore as ms

    if device_target is None:
        device_target = ms.get_context("device_target")
    canon = {field: canonical_dtype_name(value, key=f"{key_prefix}.{field}")
             for field, value in names.items()}
    fallback = [f for f, v in canon.items() if v == "bfloat16"] if device_target == "CPU" else []
    if fallback:
        log.warning(
            "%s bfloat16 cannot compute on CPU (no bf16 kernels); computing in float32 instead. "
            "On Ascend the configured dtype is used.", ", ".join(fallback))
    return {f: to_ms_dtype("float32" if f in fallback else v) for f, v in canon.items()}
