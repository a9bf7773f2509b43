"""Bottleneck adapters (Houlsby et al. 2019; mindpet's AdapterDense): after each target layer,

    y = h + up(act(down(dropout(h))))     h = base(x)

Target the attention output and FFN output projections (Llama '.*wo|.*w2', ChatGLM2
'.*dense$|.*dense_4h_to_h', GPT-2 '.*projection') to get the classic two adapters per block. `up`
starts at zero, so the model is unchanged until it trains. Targets are matched like LoRA's and may
be petrun Linear, nn.Dense or GPT-2's LinearInOut layers.

Parameters (b = bottleneck_size, out = the target's output width):
    <layer>.mindpet_delta_adapter_down.weight [b, out]   .bias [b]
    <layer>.mindpet_delta_adapter_up.weight   [out, b]   .bias [out]
Trainable count: Σ (2·b·out + b + out) over the targets. Not mergeable (the bottleneck is
non-linear), and PEFT has no bottleneck adapters (AdapterHub's `adapters` library does).
"""
from __future__ import annotations

from mindspore import nn, ops
from mindspore.common.initializer import Normal

from petrun.models.layers import Linear
from petrun.pet import base as pet_base
from petrun.pet.config import AdapterConfig
from petrun.pet.ia3 import adaptable_types

PET_TYPE = "adapter"


def _activation(name: str) -> nn.Cell:
    return {"relu": nn.ReLU, "gelu": lambda: nn.GELU(approximate=True), "silu": nn.SiLU,
            "tanh": nn.Tanh}[name]()


class AdapterLinear(nn.Cell):
    """Wraps a linear layer (Parameters shared) and adds the bottleneck on its output."""
    shard_kind = "adapter"

    def __init__(self, base, bottleneck: int, non_linearity: str = "gelu", dropout: float = 0.0):
        super().__init__()
        self.out_channels = int(base.out_channels)
        self.has_bias = bool(base.has_bias)
        # Own attributes first so the shared Parameters keep their `<layer>.weight` names.
        self.weight = base.weight
        self.bias = base.bias if self.has_bias else None
        dtype = base.weight.dtype
        compute = getattr(base, "compute_dtype", None) or dtype
        self.mindpet_delta_adapter_down = Linear(self.out_channels, int(bottleneck), has_bias=True,
                                                 compute_dtype=compute, param_init_type=dtype,
                                                 weight_init=Normal(sigma=0.01))
        self.mindpet_delta_adapter_up = Linear(int(bottleneck), self.out_channels, has_bias=True,
                                               compute_dtype=compute, param_init_type=dtype,
                                               weight_init="zeros")
        self.act = _activation(non_linearity)
        self.dropout = nn.Dropout(p=float(dropout))
        self.base = base
        self.add = ops.Add()

    def construct(self, x):
        h = self.base(x)
        delta = self.mindpet_delta_adapter_up(self.act(self.mindpet_delta_adapter_down(
            self.dropout(h))))
        return self.add(h, ops.cast(delta, h.dtype))


def parameter_count(out_widths: list[int], bottleneck: int) -> int:
    return sum(2 * bottleneck * o + bottleneck + o for o in out_widths)


def apply(net, cfg: AdapterConfig) -> pet_base.PetReport:
    pet_base.check_fresh(net, PET_TYPE)
    include, exclude = pet_base.freeze_globs(cfg)
    targets = pet_base.find_targets(net, cfg.target_modules, cfg.exclude_layers,
                                    types=adaptable_types())
    for t in targets:
        pet_base.replace_child(t.parent, t.name, AdapterLinear(
            t.cell, cfg.bottleneck_size, cfg.non_linearity, cfg.adapter_dropout))
    pet_base.refresh_parameter_names(net)
    pet_base.freeze(net, PET_TYPE, include, exclude)
    return pet_base.make_report(net, PET_TYPE, [t.path for t in targets])
