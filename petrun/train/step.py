"""One optimizer step as graph-compiled cells: loss scaling, overflow skip, global-norm clipping,
gradient accumulation. Mirrors MindFormers' MFTrainOneStepCell (reference/mindformers.md §8.2).

Without accumulation one cell does forward, backward and update. With accumulation k > 1 an
`accumulate` cell adds unscaled gradients into fp32 buffers k times and an `update` cell applies
their mean once, so memory stays at one micro-batch (what accumulation is for).
"""
from __future__ import annotations

from typing import Any, Mapping

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.ops import composite as C
from mindspore.ops import functional as F

from petrun.errors import UserError
from petrun.train.compile_cache import CachedCompile
from petrun.train.heap import TrimAfterCompile


def build_loss_scale(scale_sense: Any):
    """runner_wrapper.scale_sense → (initial scale, update cell or None)."""
    if scale_sense is None:
        return 1.0, None
    if isinstance(scale_sense, (int, float)) and not isinstance(scale_sense, bool):
        return float(scale_sense), None
    if isinstance(scale_sense, Mapping):
        kind = scale_sense.get("type")
        value = float(scale_sense.get("loss_scale_value", 2 ** 16))
        if kind == "DynamicLossScaleUpdateCell":
            return value, nn.DynamicLossScaleUpdateCell(
                loss_scale_value=value, scale_factor=int(scale_sense.get("scale_factor", 2)),
                scale_window=int(scale_sense.get("scale_window", 1000)))
        if kind == "FixedLossScaleUpdateCell":
            return value, None
    raise UserError(f"unsupported scale_sense {scale_sense!r}", key="runner_wrapper.scale_sense",
                    fix="use a number (1.0 = no loss scale) or {type: DynamicLossScaleUpdateCell, "
                        "loss_scale_value: 65536, scale_factor: 2, scale_window: 1000}")


# Per-gradient work goes through HyperMap, never a generator expression, comprehension or for
# loop over the gradient tuple: MindSpore 2.10 compiles those several times slower (cast, norm,
# clip and AdamW over a small Llama's 64 LoRA gradients: 6.7 s against 0.8 s; the whole step's
# compile 21-27 s -> 16 s, benchmarks/compile_phases.py). Same ops, bit-identical numbers
# (tests/train/test_step_graph_code.py).
_map = C.HyperMap()
_square_sum = C.MultitypeFuncGraph("square_sum")
_scaled = C.MultitypeFuncGraph("scaled")
_to_fp32_scaled = C.MultitypeFuncGraph("to_fp32_scaled")
_add_into = C.MultitypeFuncGraph("add_into")
_zero = C.MultitypeFuncGraph("zero")


@_square_sum.register("Tensor")
def _square_sum_tensor(g):
    return ops.reduce_sum(ops.square(g))


@_scaled.register("Tensor", "Tensor")
@_scaled.register("Number", "Tensor")
def _scaled_tensor(factor, g):
    return g * factor


@_to_fp32_scaled.register("Tensor", "Tensor")
def _to_fp32_scaled_tensor(factor, g):
    return ops.cast(g, ms.float32) * factor


@_add_into.register("Tensor", "Tensor")
def _add_into_tensor(buf, g):
    return ops.assign_add(buf, g)


@_zero.register("Tensor")
def _zero_tensor(buf):
    return ops.assign(buf, ops.zeros_like(buf))


def clip_by_norm(grads, norm, max_norm):
    """Scale all gradients by min(1, max_norm / global_norm)."""
    factor = ops.minimum(Tensor(1.0, ms.float32), max_norm / (norm + 1e-6))
    return _map(F.partial(_scaled, factor), grads)


class _GradCore(nn.Cell):
    """Shared pieces: scaled backward pass, overflow check, global norm."""

    def __init__(self, network, weights, scale_value, scale_update, clip_norm, use_clip):
        super().__init__(auto_prefix=False)
        self.network = network
        self.weights = weights
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.loss_scale = Parameter(Tensor(scale_value, ms.float32), name="loss_scale",
                                    requires_grad=False)
        self.scale_update = scale_update
        self.use_dynamic = scale_update is not None
        self.clip_norm = float(clip_norm)
        self.use_clip = bool(use_clip)

    def scaled_grads(self, *inputs):
        # inputs: (input_ids, labels) or, packed, (input_ids, labels, position_ids, segment_ids)
        loss = self.network(*inputs)
        sens = ops.cast(self.loss_scale, loss.dtype)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        inv = ops.cast(1.0 / self.loss_scale, ms.float32)
        grads = _map(F.partial(_to_fp32_scaled, inv), grads)
        return loss, grads

    def global_norm(self, grads):
        return ops.sqrt(ops.stack(_map(_square_sum, grads)).sum())

    def overflow(self, norm):
        # Any inf/nan gradient makes the global norm non-finite: one check instead of one per tensor.
        return ops.logical_not(ops.isfinite(norm))

    def next_scale(self, overflow):
        if self.use_dynamic:
            overflow = self.scale_update(self.loss_scale, overflow)
        return overflow


class TrainStep(TrimAfterCompile, CachedCompile, _GradCore):
    """forward + backward + clipped optimizer update. Returns (loss, overflow, loss_scale, norm).

    A step whose gradients are not finite applies no update, with or without a loss scale, as
    MindFormers' MFTrainOneStepCell does (its overflow flag is the gradients' status even for a
    constant scale of 1.0). With a dynamic loss scale (fp16) such steps are routine and the scale
    adapts; without one the parameters stay as they were before the step, which is what lets
    train/faults.py tell a bad batch from a bad update.

    Its graph is kept across runs (petrun.train.compile_cache), keyed by everything it depends on.
    """

    def __init__(self, network, optimizer, scale_value=1.0, scale_update=None, clip_norm=1.0,
                 use_clip=True, grad_reducer=None):
        super().__init__(network, optimizer.parameters, scale_value, scale_update, clip_norm, use_clip)
        self.optimizer = optimizer
        # Data parallel: gradients are reduced over ranks before the norm, so clipping and
        # overflow decisions agree on every rank.
        self.grad_reducer = grad_reducer
        self.reduce = grad_reducer is not None
        # Overflows are routine under a loss scale (the recipe goes on), a fault without one.
        self.loss_scaled = scale_update is not None or float(scale_value) != 1.0

    def construct(self, *inputs):
        loss, grads = self.scaled_grads(*inputs)
        if self.reduce:
            grads = self.grad_reducer(grads)
        norm = self.global_norm(grads)
        overflow = self.next_scale(self.overflow(norm))
        if self.use_clip:
            grads = clip_by_norm(grads, norm, self.clip_norm)
        if not overflow:
            self.optimizer(grads)
        return loss, overflow, self.loss_scale.value(), norm


class AccumulateStep(TrimAfterCompile, _GradCore):
    """Adds one micro-batch's unscaled gradients into `buffers`; returns (loss, overflow)."""

    def __init__(self, network, weights, buffers, scale_value=1.0, scale_update=None):
        super().__init__(network, weights, scale_value, scale_update, 1.0, False)
        self.buffers = buffers
        # float32, not bool: MindSpore cannot Load a bool Parameter inside a graph.
        self.seen_overflow = Parameter(Tensor(0.0, ms.float32), name="seen_overflow", requires_grad=False)

    def construct(self, *inputs):
        loss, grads = self.scaled_grads(*inputs)
        overflow = self.overflow(self.global_norm(grads))
        _map(_add_into, self.buffers, grads)
        ops.assign(self.seen_overflow, ops.maximum(self.seen_overflow, ops.cast(overflow, ms.float32)))
        return loss, overflow


class ApplyAccumulated(nn.Cell):
    """Clips and applies the mean of the accumulated gradients, then zeroes the buffers.

    Returns (overflow, loss_scale, global_norm); the update is skipped when any micro-batch
    overflowed, and the loss scale is updated once per optimizer step.
    """

    def __init__(self, accumulate: AccumulateStep, optimizer, steps: int, clip_norm=1.0, use_clip=True,
                 grad_reducer=None):
        super().__init__(auto_prefix=False)
        self.grad_reducer = grad_reducer   # data parallel: reduce once per optimizer step
        self.reduce = grad_reducer is not None
        self.acc = accumulate
        self.optimizer = optimizer
        self.inv_steps = 1.0 / float(steps)
        self.clip_norm = float(clip_norm)
        self.use_clip = bool(use_clip)
        self.loss_scaled = accumulate.scale_update is not None or float(accumulate.loss_scale.asnumpy()) != 1.0

    def construct(self):
        grads = _map(F.partial(_scaled, self.inv_steps), self.acc.buffers)
        if self.reduce:
            grads = self.grad_reducer(grads)
        norm = self.acc.global_norm(grads)
        # Another rank's overflow shows up here as a non-finite reduced norm.
        overflow = self.acc.next_scale(ops.logical_or(self.acc.seen_overflow.value() > 0.5,
                                                      self.acc.overflow(norm)))
        if self.use_clip:
            grads = clip_by_norm(grads, norm, self.clip_norm)
        if not overflow:
            self.optimizer(grads)
        _map(_zero, self.acc.buffers)
        ops.assign(self.acc.seen_overflow, Tensor(0.0, ms.float32))
        return overflow, self.acc.loss_scale.value(), norm


def make_buffers(params) -> ms.ParameterTuple:
    import numpy as np
    return ms.ParameterTuple([Parameter(Tensor(np.zeros(p.shape, np.float32)), name=f"accu_grads.{p.name}",
                                        requires_grad=False) for p in params])


class PackedInputs(nn.Cell):
    """Packed rows carry positions and segment ids: (input_ids, labels, position_ids,
    segment_ids) → the causal LM's keyword slots (no prefix, no prompt embeddings)."""

    def __init__(self, network):
        super().__init__(auto_prefix=False)   # parameter names stay the model's
        self.network = network

    def construct(self, input_ids, labels, position_ids, segment_ids):
        return self.network(input_ids, labels, None, None, position_ids, segment_ids)



class OptimizerStep:
    """One optimizer step over `accum` micro-batches: TrainStep, or AccumulateStep k times and
    ApplyAccumulated once. Calling it returns (loss, overflow, loss_scale, grad_norm) as Python
    numbers; `cell` holds the training state (optimizer moments, loss scale) a checkpoint saves."""

    def __init__(self, net, optimizer, trainable: list, accum: int, scale_sense, clip_norm: float,
                 use_clip: bool, grad_reducer=None):
        scale, update = build_loss_scale(scale_sense)
        self.accum = accum
        if accum == 1:
            self.step_cell = TrainStep(net, optimizer, scale, update, clip_norm, use_clip,
                                       grad_reducer=grad_reducer)
            self.step_cell.set_train(True)
            self.cell = self.step_cell
        else:
            self.acc_cell = AccumulateStep(net, optimizer.parameters, make_buffers(trainable),
                                           scale, update)
            self.apply_cell = ApplyAccumulated(self.acc_cell, optimizer, accum, clip_norm,
                                               use_clip, grad_reducer=grad_reducer)
            self.acc_cell.set_train(True)
            self.cell = self.apply_cell
        self.loss_scaled = self.cell.loss_scaled

    def __call__(self, batches) -> tuple[float, bool, float, float]:
        if self.accum == 1:
            loss, overflow, scale, norm = self.step_cell(*batches[0])
            loss = float(loss.asnumpy())
        else:
            import numpy as np
            loss = float(np.mean([float(self.acc_cell(*b)[0].asnumpy()) for b in batches]))
            overflow, scale, norm = self.apply_cell()
        return loss, bool(overflow.asnumpy()), float(scale.asnumpy()), float(norm.asnumpy())
