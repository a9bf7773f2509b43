"""IA3 (Liu et al. 2022; PEFT's IA3): a learned vector rescales each target layer's output, or,
for the layers feedforward_modules names, its input.

    y = base(x) · l      l: <layer>.mindpet_delta_ia3_l  [out, 1]   (attention-style targets)
    y = base(x · l)      l: <layer>.mindpet_delta_ia3_l  [1, in]    (feed-forward targets)

Shapes and orientation are PEFT's `ia3_l`, so mapping is a rename. l starts at ones (the model is
unchanged until it trains). Targets are matched like LoRA's (MindFormers semantics: re.match on
local layer names) and may be petrun Linear, nn.Dense or GPT-2's in×out LinearInOut layers.
Trainable count: Σ out (or in, for feed-forward targets) over the targets.

merge() folds l into the weight (output rows — and the bias — or input columns) and unmerge()
divides it out again; while merged the forward applies no scaling.
"""
from __future__ import annotations

import functools
import re

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer

from petrun.errors import UserError
from petrun.pet import base as pet_base
from petrun.pet.config import IA3Config

PET_TYPE = "ia3"
FF_KEY = f"{pet_base.KEY_PREFIX}.feedforward_modules"


def adaptable_types() -> tuple[type, ...]:
    """nn.Dense and every petrun DenseBase (GPT-2's [in, out] LinearInOut too): the types every
    layer method targets (pet_base.linear_types)."""
    return pet_base.linear_types()


class IA3Linear(nn.Cell):
    """Wraps a linear layer; its weight and bias Parameters are shared, never copied.

    In semi-auto parallel the vector is split like the base's outputs (or, feed-forward, inputs).
    """
    shard_kind = "ia3"

    def __init__(self, base, feedforward: bool, init_ones: bool = True):
        super().__init__()
        if getattr(base, "activation_flag", False):
            raise UserError(f"IA3 cannot adapt an nn.Dense with a fused activation "
                            f"({type(base.activation).__name__})", key=pet_base.TARGET_KEY,
                            fix="target layers without an activation")
        self.in_channels = int(base.in_channels)
        self.out_channels = int(base.out_channels)
        self.has_bias = bool(base.has_bias)
        self.feedforward = bool(feedforward)
        self.in_out = pet_base.weight_is_in_out(base)
        # Own attributes first so the shared Parameters keep their `<layer>.weight` names.
        self.weight = base.weight
        self.bias = base.bias if self.has_bias else None
        shape = [1, self.in_channels] if self.feedforward else [self.out_channels, 1]
        init = "ones" if init_ones else "normal"
        self.mindpet_delta_ia3_l = Parameter(initializer(init, shape, base.weight.dtype),
                                             name="mindpet_delta_ia3_l")
        self.base = base
        self.scale_mul = ops.Mul()
        self.merged = False
        self._held = {}   # the vector while merged (not a Parameter, not saved)

    def construct(self, x):
        if self.merged:
            return self.base(x)
        scale = ops.reshape(self.mindpet_delta_ia3_l, (-1,))
        if self.feedforward:
            return self.base(self.scale_mul(x, ops.cast(scale, x.dtype)))
        out = self.base(x)
        return self.scale_mul(out, ops.cast(scale, out.dtype))

    def _scale_weight(self, vec: np.ndarray, inverse: bool) -> None:
        """Multiply (or divide) the weight's output rows / input columns by `vec`, in fp32."""
        w = self.weight.asnumpy().astype(np.float32)
        v = vec.reshape(-1).astype(np.float32)
        if inverse:
            v = 1.0 / v
        axis_out = 1 if self.in_out else 0            # which weight axis is `out`
        axis = 1 - axis_out if self.feedforward else axis_out
        shape = [1, 1]
        shape[axis] = -1
        self.weight.set_data(Tensor((w * v.reshape(shape)).astype(w.dtype),
                                    self.weight.dtype))
        if self.has_bias and not self.feedforward:
            b = self.bias.asnumpy().astype(np.float32)
            self.bias.set_data(Tensor(b * v, self.bias.dtype))

    def merge(self) -> None:
        if self.merged:
            return
        vec = self.mindpet_delta_ia3_l.asnumpy().astype(np.float32).copy()
        if np.any(np.abs(vec) < 1e-12):
            raise UserError("an IA3 vector has a zero entry, so merging it could not be undone",
                            fix="merge into a copy of the weights (petrun ckpt merge) instead")
        self._scale_weight(vec, inverse=False)
        self._held["l"] = vec
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            return
        self._scale_weight(self._held.pop("l"), inverse=True)
        self.merged = False

    def extend_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"feedforward={self.feedforward}, merged={self.merged}")


def ia3_layers(net) -> list[tuple[str, IA3Linear]]:
    return [(path, cell) for path, cell in net.cells_and_names() if isinstance(cell, IA3Linear)]


def merge(net) -> int:
    todo = [c for _, c in ia3_layers(net) if not c.merged]
    for c in todo:
        c.merge()
    return len(todo)


def unmerge(net) -> int:
    todo = [c for _, c in ia3_layers(net) if c.merged]
    for c in todo:
        c.unmerge()
    return len(todo)


def merged_tensors(weight: np.ndarray, bias, vec: np.ndarray, feedforward: bool, in_out: bool):
    """(weight, bias) with `vec` folded in (fp32 math); the streaming merge uses this."""
    v = vec.reshape(-1).astype(np.float32)
    axis_out = 1 if in_out else 0
    axis = 1 - axis_out if feedforward else axis_out
    shape = [1, 1]
    shape[axis] = -1
    w = weight.astype(np.float32) * v.reshape(shape)
    if bias is not None and not feedforward:
        bias = bias.astype(np.float32) * v
    return w, bias


def merge_tensors(model, cfg: IA3Config, arrays: dict) -> dict:
    """The streaming merge rule (PetMethod.merge_tensors): {base tensor name: fp32 array → merged
    fp32 array} for each IA3 layer of `model` (built without weights): the weight's output rows
    or input columns, and the bias of a non-feed-forward target."""
    plan = {}
    for path, cell in ia3_layers(model):
        vec = arrays[f"{path}.mindpet_delta_ia3_l"]
        plan[f"{path}.weight"] = functools.partial(_merged_weight, vec=vec,
                                                   feedforward=cell.feedforward, in_out=cell.in_out)
        if cell.has_bias and not cell.feedforward:
            plan[f"{path}.bias"] = functools.partial(_merged_bias, vec=vec)
    return plan


def _merged_weight(weight, vec, feedforward, in_out):
    return merged_tensors(weight, None, vec, feedforward, in_out)[0]


def _merged_bias(bias, vec):
    return bias.astype(np.float32) * vec.reshape(-1).astype(np.float32)


def _feedforward_names(cfg: IA3Config, targets) -> set[str]:
    """Paths of the targets that are feed-forward; every alternative must name a target."""
    if cfg.feedforward_modules in (None, "None", ""):
        return set()
    pattern = cfg.feedforward_modules
    alternatives = pet_base.split_alternatives(pattern)
    try:
        alt_res = [re.compile(a) for a in alternatives]
    except re.error as e:
        raise UserError(f"{pattern!r} is not a valid regular expression ({e})", key=FF_KEY,
                        fix="write a Python regex such as '.*w2'") from None
    ff = set()
    for alt, rx in zip(alternatives, alt_res):
        hits = [t.path for t in targets if rx.match(t.name)]
        if not hits:
            names = sorted({t.name for t in targets})
            raise UserError(f"feedforward_modules alternative {alt!r} matches none of the IA3 "
                            f"targets ({', '.join(names)})", key=FF_KEY,
                            fix="feed-forward modules must be a subset of target_modules")
        ff.update(hits)
    return ff


def parameter_count(targets_in_out: list[tuple[int, int, bool]]) -> int:
    """Σ in (feed-forward) or out over (in, out, feedforward) triples."""
    return sum(i if ff else o for i, o, ff in targets_in_out)


def apply(net, cfg: IA3Config) -> pet_base.PetReport:
    pet_base.check_fresh(net, PET_TYPE)
    include, exclude = pet_base.freeze_globs(cfg)
    targets = pet_base.find_targets(net, cfg.target_modules, cfg.exclude_layers,
                                    types=adaptable_types())
    ff = _feedforward_names(cfg, targets)
    for t in targets:
        pet_base.replace_child(t.parent, t.name,
                               IA3Linear(t.cell, t.path in ff, bool(cfg.init_ia3_weights)))
    pet_base.refresh_parameter_names(net)
    pet_base.freeze(net, PET_TYPE, include, exclude)
    return pet_base.make_report(net, PET_TYPE, [t.path for t in targets])
