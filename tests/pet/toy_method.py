"""A toy PET method, written the way a new method is added to petrun: this one module (config,
layer, apply, planner shapes) plus one `register_method` call (tests/pet/test_toy_method.py).

"toy" scales each target layer's output by a trainable vector initialised to ones: like IA3's
output vector, kept deliberately small. Nothing in petrun/ knows its name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from petrun.pet.config import PetConfigBase

PET_TYPE = "toy"


@dataclass
class ToyConfig(PetConfigBase):
    pet_type: str = PET_TYPE
    target_modules: Any = None
    exclude_layers: Any = None

    def check(self):
        if not isinstance(self.target_modules, str) or not self.target_modules:
            return [("target_modules", "must be a regex string, e.g. '.*wq'")]
        return []


def apply(net, cfg: ToyConfig):
    from mindspore import Parameter, nn, ops
    from mindspore.common.initializer import initializer

    from petrun.pet import base as pet_base

    class ToyScale(nn.Cell):
        def __init__(self, base):
            super().__init__()
            self.weight = base.weight   # shared, keeps its `<layer>.weight` name
            self.mindpet_delta_toy_s = Parameter(
                initializer("ones", [int(base.out_channels)], base.weight.dtype),
                name="mindpet_delta_toy_s")
            self.base = base

        def construct(self, x):
            out = self.base(x)
            return out * ops.cast(self.mindpet_delta_toy_s, out.dtype)

    pet_base.check_fresh(net, PET_TYPE)
    include, exclude = pet_base.freeze_globs(cfg)
    targets = pet_base.find_targets(net, cfg.target_modules, cfg.exclude_layers)
    for t in targets:
        pet_base.replace_child(t.parent, t.name, ToyScale(t.cell))
    pet_base.refresh_parameter_names(net)
    pet_base.freeze(net, PET_TYPE, include, exclude)
    return pet_base.make_report(net, PET_TYPE, [t.path for t in targets])


def shapes(specs, cfg: ToyConfig, dims, arch, device_target):
    """The planner's view, without building: one [out] vector per target."""
    from petrun.models.shapes import ParamSpec
    from petrun.plan.pet import check_targets

    match = check_targets(specs, cfg.target_modules, cfg.exclude_layers, arch)
    added = {}
    for t in match.targets:
        weight = specs[f"{t.path}.weight"]
        added[f"{t.path}.mindpet_delta_toy_s"] = ParamSpec((weight.shape[0],), weight.dtype, "lora")
    return added, [t.path for t in match.targets], {}
