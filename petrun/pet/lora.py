"""LoRA (reference/mindformers.md §5.3): y = base(x) + (alpha / r) · (dropout(x) · Aᵀ) · Bᵀ.

Parameter names and shapes are MindFormers' so adapters interoperate:
`<layer>.mindpet_delta_lora_a` [r, in] and `<layer>.mindpet_delta_lora_b` [out, r]; the wrapped
layer keeps `<layer>.weight` / `<layer>.bias` because the wrapper reuses the same Parameter objects.
Targets are any petrun DenseBase or nn.Dense (pet_base.linear_types). GPT-2's attention.projection
and output.mapping/projection store their weight [in, out] (MindFormers' transpose_b=False Linear,
which its LoRADense adapts with the same A/B shapes): the forward is the same x·Aᵀ·Bᵀ, and the
merge adds (B·A)ᵀ to such a weight.
"""
from __future__ import annotations

import functools
import math

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeUniform, initializer

from petrun.errors import UserError
from petrun.pet import base as pet_base
from petrun.pet.config import LoraConfig

PET_TYPE = "lora"


class LoRALinear(nn.Cell):
    """Wraps a petrun DenseBase (`Linear`, GPT-2's `LinearInOut`) or an `nn.Dense`; the base
    weight is shared, never copied.

    merge() folds scaling·B·A into the base weight; unmerge() takes it out again. While merged
    the forward adds no delta, and B is held aside (lora_b reads as zeros) so that a graph
    compiled before the merge, which still computes the delta, adds exactly zero. Train only
    while unmerged (a merged B is zero and its real value is restored by unmerge()).

    A and B have matmuls of their own so that, in semi-auto parallel, each follows its base
    (petrun/parallel/strategy.py): beside a column-parallel base A is whole and B split on out;
    beside a row-parallel base A is split on in and B whole.
    """
    shard_kind = "lora"

    def __init__(self, base, lora_rank: int, lora_alpha: float, lora_dropout: float = 0.0,
                 param_init_type=None, compute_dtype=None):
        super().__init__()
        self.in_channels = int(base.in_channels)
        self.out_channels = int(base.out_channels)
        self.has_bias = bool(base.has_bias)
        self.in_out = pet_base.weight_is_in_out(base)   # [in, out]: merge adds (B·A)ᵀ
        self.lora_rank = int(lora_rank)
        self.scaling = float(lora_alpha) / float(lora_rank)
        # nn.Dense has no compute dtype: it computes in its weight's dtype.
        if compute_dtype is None:
            compute_dtype = getattr(base, "compute_dtype", None) or base.weight.dtype
        self.compute_dtype = compute_dtype
        param_dtype = base.weight.dtype if param_init_type is None else param_init_type

        # Own attributes first: parameters_and_names() lists a cell's own parameters before its
        # children's, so the shared weight is named `<layer>.weight`, not `<layer>.base.weight`.
        self.weight = base.weight
        self.bias = base.bias if self.has_bias else None
        self.mindpet_delta_lora_a = Parameter(
            initializer(HeUniform(negative_slope=math.sqrt(5)), [self.lora_rank, self.in_channels],
                        param_dtype), name="mindpet_delta_lora_a")
        self.mindpet_delta_lora_b = Parameter(
            initializer("zeros", [self.out_channels, self.lora_rank], param_dtype),
            name="mindpet_delta_lora_b")

        # An nn.Dense may fuse an activation; MindFormers applies it after the LoRA sum, so the
        # base matmul is then done here instead of by calling the base cell.
        self.activation_flag = bool(getattr(base, "activation_flag", False))
        if self.activation_flag:
            self.activation = base.activation
            self.matmul = ops.MatMul(transpose_b=True)
        self.base = base
        self.lora_dropout = nn.Dropout(p=float(lora_dropout))
        self.lora_a = ops.MatMul(transpose_b=True)
        self.lora_b = ops.MatMul(transpose_b=True)
        self.lora_scale = ops.Mul()
        self.lora_add = ops.Add()
        self.merged = False
        self._held = {}   # B while merged (a plain dict: not a parameter, not in checkpoints)

    def _pre_activation(self, x):
        out_shape = x.shape[:-1] + (self.out_channels,)
        y = self.matmul(ops.reshape(x, (-1, self.in_channels)), self.weight)
        if self.has_bias:
            y = y + self.bias
        return ops.reshape(y, out_shape)

    def construct(self, x):
        out = self._pre_activation(x) if self.activation_flag else self.base(x)
        if not self.merged:
            out_shape = x.shape[:-1] + (self.out_channels,)
            h = self.lora_dropout(ops.cast(x, self.compute_dtype))
            h = ops.reshape(h, (-1, self.in_channels))
            h = self.lora_a(h, ops.cast(self.mindpet_delta_lora_a, self.compute_dtype))
            # B·(s·A x) = s·(B·A x): scaled on the rank-r side, out/r times fewer elements
            # (exact for power-of-two scalings such as alpha == rank).
            h = self.lora_scale(h, self.scaling)
            h = self.lora_b(h, ops.cast(self.mindpet_delta_lora_b, self.compute_dtype))
            out = self.lora_add(out, ops.cast(ops.reshape(h, out_shape), out.dtype))
        if self.activation_flag:
            out = self.activation(out)
        return out

    def delta_weight(self) -> Tensor:
        """scaling · B · A in float32, [out, in]."""
        b = self._held.get("b")
        if b is None:
            b = ops.cast(self.mindpet_delta_lora_b, ms.float32)
        return ops.matmul(b, ops.cast(self.mindpet_delta_lora_a, ms.float32)) * self.scaling

    def weight_delta(self) -> Tensor:
        """What merge() adds to the weight, in the weight's own layout ([in, out] transposed)."""
        delta = self.delta_weight()
        return ops.transpose(delta, (1, 0)) if self.in_out else delta

    def merge(self) -> None:
        """weight += scaling·B·A (transposed for an [in, out] weight; fp32 math, stored in the
        weight's dtype). Idempotent."""
        if self.merged:
            return
        w = self.weight
        w.set_data(ops.cast(ops.cast(w, ms.float32) + self.weight_delta(), w.dtype))
        b = self.mindpet_delta_lora_b
        # A real copy: a same-dtype cast may alias the buffer that set_data overwrites.
        self._held["b"] = Tensor(ops.cast(b, ms.float32).asnumpy().copy())
        b.set_data(ops.zeros(b.shape, b.dtype))
        self.merged = True

    def unmerge(self) -> None:
        """Undo merge(): restore B and subtract its delta from the weight. Idempotent."""
        if not self.merged:
            return
        w = self.weight
        w.set_data(ops.cast(ops.cast(w, ms.float32) - self.weight_delta(), w.dtype))
        b = self.mindpet_delta_lora_b
        b.set_data(ops.cast(self._held.pop("b"), b.dtype))
        self.merged = False

    def extend_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"rank={self.lora_rank}, scaling={self.scaling}, in_out={self.in_out}, "
                f"merged={self.merged}")


def lora_layers(net) -> list[tuple[str, LoRALinear]]:
    return [(path, cell) for path, cell in net.cells_and_names() if isinstance(cell, LoRALinear)]


def merge(net) -> int:
    """Merge every LoRA layer of `net`; returns how many were merged now."""
    todo = [cell for _, cell in lora_layers(net) if not cell.merged]
    for cell in todo:
        cell.merge()
    return len(todo)


def unmerge(net) -> int:
    todo = [cell for _, cell in lora_layers(net) if cell.merged]
    for cell in todo:
        cell.unmerge()
    return len(todo)


def merged_weight(weight: np.ndarray, a: np.ndarray, b: np.ndarray, scaling: float,
                  in_out: bool) -> np.ndarray:
    """weight + scaling·B·A in float32 (B·A transposed for an [in, out] weight): the streaming
    merge's rule, the numpy twin of LoRALinear.merge."""
    delta = scaling * (b.astype(np.float32) @ a.astype(np.float32))
    return weight.astype(np.float32) + (delta.T if in_out else delta)


def merge_tensors(model, cfg: LoraConfig, arrays: dict) -> dict:
    """The streaming merge rule (PetMethod.merge_tensors): {base tensor name: fp32 array → merged
    fp32 array} for each LoRA layer of `model` (built without weights), from the adapter `arrays`.
    The scaling is LoraConfig's, the one the live layer uses."""
    plan = {}
    for path, cell in lora_layers(model):
        a = arrays[f"{path}.mindpet_delta_lora_a"]
        b = arrays[f"{path}.mindpet_delta_lora_b"]
        plan[f"{path}.weight"] = functools.partial(merged_weight, a=a, b=b, scaling=cfg.scaling,
                                                   in_out=cell.in_out)
    return plan


def parameter_count(in_out: list[tuple[int, int]], lora_rank: int) -> int:
    """Trainable elements for targets of (in, out) widths: Σ rank·(in + out)."""
    return sum(int(lora_rank) * (i + o) for i, o in in_out)


def _config_dtypes(cfg: LoraConfig) -> dict:
    names = {k: getattr(cfg, k) for k in ("param_init_type", "compute_dtype")
             if getattr(cfg, k) not in (None, "None", "")}
    if not names:
        return {}
    from petrun.models.dtypes import resolve_dtypes

    return resolve_dtypes(names, key_prefix=pet_base.KEY_PREFIX)


def apply(net, lora_config: LoraConfig) -> pet_base.PetReport:
    """Wrap every target layer in LoRALinear, fix names, freeze all but LoRA; return the report."""
    if lora_layers(net):
        raise UserError("LoRA is already applied to this model", key=pet_base.KEY_PREFIX,
                        fix="build the base model afresh before applying a pet_config")
    # Everything a user can get wrong is checked before the net is touched.
    include, exclude = pet_base.freeze_globs(lora_config)
    dtypes = _config_dtypes(lora_config)
    targets = pet_base.find_targets(net, lora_config.target_modules, lora_config.exclude_layers)
    for t in targets:
        pet_base.replace_child(t.parent, t.name, LoRALinear(
            t.cell, lora_config.lora_rank, lora_config.lora_alpha, lora_config.lora_dropout,
            param_init_type=dtypes.get("param_init_type"),
            compute_dtype=dtypes.get("compute_dtype")))
    pet_base.refresh_parameter_names(net)
    pet_base.freeze(net, PET_TYPE, include, exclude)
    return pet_base.make_report(net, PET_TYPE, [t.path for t in targets])
