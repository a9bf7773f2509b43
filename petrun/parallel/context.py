"""MindSpore context from the config's `context` section, and the distributed context from
`use_parallel`, `parallel` and `parallel_config` (reference/mindformers.md §1.5).

A distributed run is started by `petrun launch` / scripts/msrun_launcher.sh (or msrun), which run
the same command in one scheduler and N worker processes, telling them apart by MS_ROLE
(feasibility.md §3). The scheduler executes the command only until `init()`, where it blocks and
then exits: nothing before init_distributed() may write files or do heavy work.

Data parallel (parallel_mode 0) runs on CPU. Semi-auto/auto/hybrid parallel needs Ascend (or GPU):
petrun refuses it on CPU with a message naming parallel.parallel_mode, before MindSpore would fail
with a cryptic one.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from petrun.errors import UserError

log = logging.getLogger("petrun")


def target_available(name: str) -> bool:
    """Whether this MindSpore build can run on `name` (the PyPI CPU wheel runs only CPU)."""
    if name == "CPU":
        return True
    import mindspore as ms
    try:
        return bool(ms.hal.is_available(name))
    except Exception:  # hal API differences across releases: treat as unavailable
        return False


def setup_context(cfg) -> str:
    """Apply `context` (mode, device_target, device_id, max_device_memory); return the target."""
    import mindspore as ms

    ctx = cfg.get("context") or {}
    target = ctx.get("device_target", "CPU")
    if not target_available(target):
        raise UserError(
            f"context.device_target is {target}, but this MindSpore build cannot run on it "
            "(the PyPI wheel is CPU-only)", file=cfg.origin("context.device_target"),
            key="context.device_target",
            fix="add the override context.device_target=CPU (and a model size that fits this machine), "
                "or run on a machine with that backend installed")
    # Before any MindSpore call: a config error must stop the scheduler too, not leave it
    # waiting in init() for workers that already quit.
    check_launch(cfg, target)
    # MindSpore writes rank_N/om/analyze_fail.ir (a failed or interrupted graph compile) under
    # $MS_OM_PATH, else the working folder; keep it with the run's logs (a user's setting wins).
    out = cfg.get("output_dir")
    if out and "MS_OM_PATH" not in os.environ:
        os.environ["MS_OM_PATH"] = os.path.join(os.path.abspath(os.path.expanduser(str(out))), "log")
    mode = ms.GRAPH_MODE if int(ctx.get("mode", 0)) == 0 else ms.PYNATIVE_MODE
    kwargs = {"mode": mode}
    if target != "CPU" and ctx.get("max_device_memory"):
        kwargs["max_device_memory"] = ctx["max_device_memory"]
    if ctx.get("jit_config"):
        kwargs["jit_config"] = dict(ctx["jit_config"])
    ms.set_context(**kwargs)
    if ctx.get("runtime_num_threads"):
        # Kernel threads (MindSpore's deprecated context.runtime_num_threads); set once, before
        # the first kernel. In-process reuse (tests, Python API) may already have set them.
        try:
            ms.device_context.cpu.op_tuning.threads_num(int(ctx["runtime_num_threads"]))
        except RuntimeError as e:
            log.debug("runtime_num_threads not applied: %s", e)
    # Under msrun the device follows the local rank (MindFormers drops device_id there).
    device_id = ctx.get("device_id") if target != "CPU" and "MS_ROLE" not in os.environ else None
    try:
        if device_id is not None:
            ms.set_device(target, int(device_id))
        else:
            ms.set_device(target)
    except RuntimeError as e:
        # In-process use (Python API, tests): an earlier kernel fixed the device. Same target:
        # nothing to change. Another target cannot be had in this process.
        if "has been initialized" not in str(e) or ms.get_context("device_target") != target:
            raise UserError(f"this process already runs MindSpore on "
                            f"{ms.get_context('device_target')}; it cannot switch to {target}",
                            key="context.device_target", file=cfg.origin("context.device_target"),
                            fix="run the job in a fresh process (the petrun CLI does)") from None
    if ctx.get("max_call_depth"):
        ms.set_recursion_limit(int(ctx["max_call_depth"]))
    init_distributed(cfg)
    return target


def set_seed(seed: int) -> None:
    import random

    import mindspore as ms
    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)


# ============================================================================ distributed
MODES = {0: "DATA_PARALLEL", 1: "SEMI_AUTO_PARALLEL", 2: "AUTO_PARALLEL", 3: "HYBRID_PARALLEL"}
_MODE_NAMES = {n.lower(): n for n in (*MODES.values(), "STAND_ALONE")}
LAUNCH_HINT = ('bash scripts/msrun_launcher.sh "petrun finetune --config C --use_parallel True" 2, '
               "or petrun launch --worker-num 2 -- petrun finetune --config C --use_parallel True")


def role() -> str | None:
    """MS_SCHED / MS_WORKER under petrun launch or msrun; None in a plain process."""
    return os.environ.get("MS_ROLE") or None


def is_scheduler() -> bool:
    """True in the launcher's scheduler process, which must do nothing but reach init()."""
    return role() == "MS_SCHED"


def parallel_mode(cfg) -> str:
    """parallel.parallel_mode as MindSpore's name (ints 0-3 or the names, any case)."""
    value = (cfg.get("parallel") or {}).get("parallel_mode", 0)
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and value in MODES:
        return MODES[value]
    if isinstance(value, str) and value.strip().lower() in _MODE_NAMES:
        return _MODE_NAMES[value.strip().lower()]
    raise UserError(f"unknown parallel_mode {value!r}", key="parallel.parallel_mode",
                    file=cfg.origin("parallel.parallel_mode"),
                    fix="use 0 (data parallel), 1 (semi-auto), 2 (auto) or 3 (hybrid)")


def check_launch(cfg, device_target: str) -> None:
    """The config and the way the process was started must agree (no MindSpore needed)."""
    launched = role() is not None
    if not cfg.get("use_parallel"):
        if launched:
            raise UserError("this process was started by petrun launch / msrun, but use_parallel is "
                            "False: every worker would train alone on all the data",
                            key="use_parallel", file=cfg.origin("use_parallel"),
                            fix="add --use_parallel True to the launched command")
        return
    if not launched:
        raise UserError("use_parallel True needs a distributed launch (one process per device)",
                        key="use_parallel", file=cfg.origin("use_parallel"),
                        fix=f"start it with {LAUNCH_HINT}; or run one process with --use_parallel False")
    mode = parallel_mode(cfg)
    if mode == "STAND_ALONE":
        raise UserError("parallel_mode STAND_ALONE with use_parallel True: the ranks would never "
                        "exchange gradients", key="parallel.parallel_mode",
                        file=cfg.origin("parallel.parallel_mode"),
                        fix="set parallel.parallel_mode=0 (data parallel)")
    if device_target == "CPU" and mode != "DATA_PARALLEL":
        raise UserError(f"parallel_mode {mode} (model/pipeline parallel) runs only on Ascend or GPU; "
                        "on CPU MindSpore supports data parallel alone", key="parallel.parallel_mode",
                        file=cfg.origin("parallel.parallel_mode"),
                        fix="set parallel.parallel_mode=0 (data parallel) for a CPU run")
    par = cfg.get("parallel") or {}
    if device_target == "CPU" and par.get("enable_parallel_optimizer"):
        raise UserError("optimizer sharding (enable_parallel_optimizer) is not available on CPU",
                        key="parallel.enable_parallel_optimizer",
                        file=cfg.origin("parallel.enable_parallel_optimizer"),
                        fix="set parallel.enable_parallel_optimizer=False for a CPU run")


@dataclass
class Distributed:
    """What init_distributed settled: this process's place and the parallel context it set."""
    rank: int = 0
    world: int = 1
    mode: str = "STAND_ALONE"
    context: dict = field(default_factory=dict)   # the set_auto_parallel_context arguments
    notes: list = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.world > 1 or self.mode != "STAND_ALONE"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_STATE: Distributed | None = None


def parallel_context(cfg, world: int, rank: int, mode: str | None = None) -> tuple[dict, list[str]]:
    """The set_auto_parallel_context arguments for `cfg` on `world` devices (pure: no MindSpore).

    Data parallel: gradients averaged (or summed) over ranks as `parallel.gradients_mean` says,
    each rank reading its own shard of the data (full_batch forced False, as MindFormers does).
    Semi/auto/hybrid: dp·mp·pp must equal the world size; the strategy file goes to
    <output_dir>/strategy/ckpt_strategy_rank_<rank>.ckpt with frozen weights listed.
    """
    mode = mode or parallel_mode(cfg)
    par = dict(cfg.get("parallel") or {})
    notes: list[str] = []
    kwargs = {"parallel_mode": mode, "device_num": int(world),
              "gradients_mean": bool(par.get("gradients_mean", False))}
    if mode == "DATA_PARALLEL":
        kwargs["full_batch"] = False
        if par.get("enable_parallel_optimizer"):
            kwargs["enable_parallel_optimizer"] = True
        if not kwargs["gradients_mean"] and world > 1:
            notes.append("parallel.gradients_mean is False: gradients are summed over the "
                         f"{world} ranks (an effective learning rate {world}× the single-process one)")
        return kwargs, notes
    from petrun.parallel.strategy import ParallelDims
    dims = ParallelDims.from_config(cfg)
    if dims.devices != world:
        raise UserError(f"data_parallel {dims.dp} × model_parallel {dims.mp} × pipeline_stage "
                        f"{dims.pp} = {dims.devices}, but the job has {world} devices",
                        key="parallel_config", file=cfg.origin("parallel_config.data_parallel"),
                        fix=f"make the product equal {world} (e.g. data_parallel "
                            f"{max(world // (dims.mp * dims.pp), 1)}), or launch {dims.devices} workers")
    kwargs["full_batch"] = bool(par.get("full_batch", True))
    kwargs["enable_parallel_optimizer"] = dims.optimizer_shard
    if par.get("parallel_optimizer_config"):
        kwargs["parallel_optimizer_config"] = dict(par["parallel_optimizer_config"])
    for key in ("enable_alltoall", "loss_repeated_mean", "dataset_strategy"):
        if key in par:
            kwargs[key] = par[key]
    if mode == "AUTO_PARALLEL":
        kwargs["search_mode"] = par.get("search_mode", "sharding_propagation")
    if dims.pp > 1:
        kwargs["pipeline_stages"] = dims.pp
    elif dims.micro_batch_num != 1:
        notes.append("micro_batch_num only matters with pipeline stages; using 1")
    strat = par.get("strategy_ckpt_config") or {}
    if not strat and par.get("strategy_ckpt_save_file"):
        strat = {"save_file": par["strategy_ckpt_save_file"]}
    save = os.path.basename(str(strat.get("save_file") or "ckpt_strategy.ckpt"))
    stem, ext = os.path.splitext(save)
    out = cfg.get("output_dir") or "./output"
    only_trainable = bool(strat.get("only_trainable_params", False))
    if only_trainable:
        notes.append("strategy_ckpt_config.only_trainable_params is True: the saved strategy "
                     "lacks the frozen weights, so the full checkpoint cannot be resharded with it")
    kwargs["strategy_ckpt_config"] = {
        "save_file": os.path.join(out, "strategy", f"{stem}_rank_{rank}{ext or '.ckpt'}"),
        "only_trainable_params": only_trainable}
    load = strat.get("load_file") or par.get("strategy_ckpt_load_file")   # --strategy_load_checkpoint
    if load:
        kwargs["strategy_ckpt_config"]["load_file"] = str(load)
    return kwargs, notes


def init_distributed(cfg) -> tuple[int, int]:
    """init() and the parallel context when use_parallel; returns (rank, world). Idempotent.

    Without use_parallel: (0, 1) and nothing is touched. Call after the device is set
    (setup_context does both). In the scheduler process init() never returns.
    """
    global _STATE
    if _STATE is not None:
        return _STATE.rank, _STATE.world
    if not cfg.get("use_parallel"):
        _STATE = Distributed()
        return 0, 1
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    mode = parallel_mode(cfg)
    try:
        init()
    except RuntimeError as e:
        raise UserError(f"could not join the distributed job: {str(e).strip().splitlines()[0][:200]}",
                        key="use_parallel",
                        fix="start it with petrun launch / scripts/msrun_launcher.sh and check the "
                            "scheduler address, port and worker count") from None
    rank, world = int(get_rank()), int(get_group_size())
    kwargs, notes = parallel_context(cfg, world, rank, mode)
    call = dict(kwargs)
    call["parallel_mode"] = getattr(ms.ParallelMode, mode)
    ms.set_auto_parallel_context(**call)
    for note in notes:
        log.warning(note)
    _STATE = Distributed(rank, world, mode, kwargs, notes)
    return rank, world


def distributed() -> Distributed:
    """The state init_distributed left (a single-process Distributed before it ran)."""
    return _STATE or Distributed()


def data_shard(cfg=None) -> tuple[int, int]:
    """(num_shards, shard_id) for the dataset: data parallel splits samples over all ranks;
    semi-auto with full_batch gives every rank the whole batch (MindSpore slices it)."""
    state = distributed()
    if state.world == 1:
        return 1, 0
    if state.mode == "DATA_PARALLEL":
        return state.world, state.rank
    if state.context.get("full_batch", True):
        return 1, 0
    from petrun.parallel.strategy import ParallelDims
    dims = ParallelDims.from_config(cfg)
    return dims.dp, (state.rank % dims.stage_devices) // dims.mp


def loader_batch(cfg, batch_size: int) -> int:
    """Samples one rank's loader yields per micro-step. Semi-auto with full_batch feeds every rank
    the whole global batch (batch_size × data_parallel, × micro_batch_num with pipeline stages),
    which MindSpore slices, as MindFormers builds its dataset; otherwise batch_size."""
    state = distributed()
    if state.world == 1 or state.mode == "DATA_PARALLEL" or not state.context.get("full_batch", True):
        return batch_size
    from petrun.parallel.strategy import ParallelDims
    dims = ParallelDims.from_config(cfg)
    return batch_size * dims.dp * (dims.micro_batch_num if dims.pp > 1 else 1)


def pipeline_wrap(cfg, network, params):
    """(network, gradient reducer) for pipeline stages under semi-auto parallel (Ascend):
    MindSpore's Pipeline cell splits each batch into micro_batch_num micro-batches and
    PipelineGradReducer accumulates and reduces their gradients. (network, None) otherwise.
    Never runs on CPU, where setup_context refuses semi-auto parallel first."""
    state = distributed()
    if state.world == 1 or state.context.get("pipeline_stages", 1) <= 1:
        return network, None
    from mindspore.parallel.nn import Pipeline, PipelineGradReducer
    from petrun.parallel.strategy import ParallelDims
    dims = ParallelDims.from_config(cfg)
    wrapped = Pipeline(network, micro_size=dims.micro_batch_num)
    reducer = PipelineGradReducer(params, opt_shard=bool(state.context.get("enable_parallel_optimizer")))
    return wrapped, reducer


def gather_ints(values: list[int]) -> list[list[int]]:
    """Every rank's `values`, indexed by rank (AllGather; int32 AllReduce has no CPU kernel)."""
    state = distributed()
    if state.world == 1:
        return [list(values)]
    import numpy as np
    from mindspore import Tensor, ops
    got = ops.AllGather()(Tensor(np.asarray(values, np.int32))).asnumpy()
    return got.reshape(state.world, len(values)).tolist()


def grad_reducer(params):
    """The cell that averages (or sums) gradients over data-parallel ranks, or None.

    Only data parallel needs it: a hand-written train step computes gradients with
    GradOperation, and MindSpore inserts no reduction there (semi-auto parallel does its own).
    """
    state = distributed()
    if state.world == 1 or state.mode not in ("DATA_PARALLEL", "HYBRID_PARALLEL"):
        return None
    from mindspore import nn
    return nn.DistributedGradReducer(params, mean=bool(state.context.get("gradients_mean")),
                                     degree=state.world)


def _reset_for_tests() -> None:
    global _STATE
    _STATE = None
