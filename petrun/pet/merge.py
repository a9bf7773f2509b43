"""Merging adapters into base weights, for the methods where that is defined.

    lora  W += (lora_alpha / lora_rank) · B · A
    ia3   W's output rows (and the bias) or, for feed-forward targets, its input columns × l
Prompt-learning methods add attention slots or input tokens and adapters add a non-linear
bottleneck: no weight change reproduces them, so they cannot be merged (as in PEFT).
merge()/unmerge() work in place on a built model and are idempotent; petrun.ckpt.merge writes a
merged checkpoint file without building the model twice.
"""
from __future__ import annotations

from petrun.errors import UserError
from petrun.pet.config import RegistryView, method, resolve

# The registered methods with a merge (petrun/pet/config.py).
MERGEABLE = RegistryView(lambda m: m.merge, only=lambda m: m.mergeable)


def pet_type_of(net) -> str | None:
    """The method applied to `net` (from its parameter names), or None for a plain model."""
    wrapped = getattr(net, "pet_type", None)
    if isinstance(wrapped, str):
        return wrapped
    for p in net.get_parameters():
        if "mindpet_delta_" in p.name:
            # In-place methods: <layer>.mindpet_delta_<type>_<name> (lora_a, ia3_l, adapter_up)
            return p.name.split("mindpet_delta_", 1)[1].split("_", 1)[0]
    return None


def check_mergeable(pet_type: str | None, key: str = "model.model_config.pet_config.pet_type"):
    if pet_type not in MERGEABLE:
        raise UserError(f"pet_type {pet_type!r} cannot be merged into the base weights (only "
                        f"{', '.join(MERGEABLE)} can: the others add attention slots, virtual "
                        "tokens or a non-linear bottleneck)", key=key,
                        fix="keep the adapter next to the base checkpoint and load both")


def merge(net) -> int:
    """Merge every adapter layer of `net`; returns how many layers were merged now."""
    kind = pet_type_of(net)
    check_mergeable(kind)
    return resolve(method(kind).merge)(net)


def unmerge(net) -> int:
    kind = pet_type_of(net)
    check_mergeable(kind)
    return resolve(method(kind).unmerge)(net)
