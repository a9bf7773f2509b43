"""The parallel layout and run shape a config asks for, read without MindSpore.

MindFormers' rules (reference/mindformers.md §1.5): without use_parallel everything runs on one
device; parallel_mode 0 (data parallel) ignores model/pipeline parallel; in semi/auto parallel
dp·mp·pp (·cp) devices; runner_config.batch_size is the batch of one data-parallel rank and one
micro-batch; micro_batch_num only matters with pipeline stages.

What the model computes is decided here too, from the same switches and device the model code
reads (`kernel_paths`), so the estimator counts the tensors the selected code path holds, not the
ones MindFormers' path would.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from petrun.errors import UserError

_DATA_PARALLEL_MODES = (0, "DATA_PARALLEL", "data_parallel", "STAND_ALONE", "stand_alone")


@dataclass
class Layout:
    devices: int = 1
    dp: int = 1
    mp: int = 1
    pp: int = 1
    micro_batch_num: int = 1
    optimizer_shard: bool = False
    comm_recompute: bool = False     # parallel_optimizer_comm_recompute, as applied: re-gather
    shard_threshold_kb: int = 64     # parallel_optimizer_threshold: smaller params stay whole
    vocab_emb_dp: bool = True        # True: embedding and lm_head replicated, else split over mp
    seq_parallel: bool = False
    # Activation recompute as the model applies it: one petrun.models.recompute.LayerRecompute
    # per decoder layer (`recompute_plan`, the plan build_model applies); recompute / select_
    # recompute summarise it (every layer full; any layer with selected ops).
    recompute: bool = False
    select_recompute: bool = False
    recompute_requested: bool = False
    recompute_layers: tuple = ()
    flash_attention: bool = False    # FlashAttentionScore: no [heads, seq, seq] scores held
    strategies: bool = False         # semi/auto parallel: shard strategies set on the primitives
    fused_norm: bool = False         # the RmsNorm primitive instead of the composite RMSNorm
    norm_cast_recompute: bool = False  # Llama's fused norm rebuilds its input cast in backward
    mask_compression: bool = False   # use_attn_mask_compression: one constant mask, training
    shard_size: int = -1             # parallel_optimizer_config.optimizer_weight_shard_size
    grad_accum_shard: bool = False   # parallel_optimizer_config.gradient_accumulation_shard
    device_target: str = "CPU"

    def describe(self) -> str:
        parts = [f"{self.devices} device{'s' if self.devices > 1 else ''}",
                 f"dp {self.dp} × mp {self.mp} × pp {self.pp}"]
        if self.pp > 1:
            parts.append(f"{self.micro_batch_num} micro-batches")
        if self.optimizer_shard and self.dp > 1:
            parts.append("optimizer shard")
        if not self.vocab_emb_dp and self.mp > 1:
            parts.append("vocab parallel")
        if self.recompute:
            parts.append("recompute")
        elif self.select_recompute:
            parts.append("select recompute")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)


def _truthy(value) -> bool:
    # recompute options may be bools or per-layer lists/dicts (MindFormers): any entry means on.
    if isinstance(value, (list, tuple, dict)):
        return any(bool(v) for v in (value.values() if isinstance(value, dict) else value))
    return bool(value)


_FAMILY = {"LlamaConfig": "llama2", "ChatGLM2Config": "glm2", "GPT2Config": "gpt2"}


def kernel_paths(mc: dict, device_target: str) -> dict[str, bool]:
    """Which attention and norm code paths the model runs for model_config `mc` on
    `device_target`: the very decision the model is built from
    (petrun.models.kernel_choice.select_kernels, pure Python). FlashAttention and the RmsNorm
    primitive only on Ascend, behind MindFormers' switches; everything else composite. The chip
    is not known here: a 910B is assumed (on a 910A RmsNorm stays composite, +0 bytes for frozen
    norms). Rotary embedding is not listed: in either form its backward reads only the cos/sin
    tables and the swap matrix, so it holds no per-token tensor."""
    from types import SimpleNamespace

    from petrun.models.kernel_choice import select_kernels
    family = _FAMILY.get(str(mc.get("type") or ""))
    if family is None:
        return {"flash_attention": False, "fused_norm": False, "norm_cast_recompute": False,
                "mask_compression": False}
    choice = select_kernels(family, SimpleNamespace(**dict(mc)), device_target)
    return {"flash_attention": choice.flash_attention, "fused_norm": choice.fused_rms_norm,
            "norm_cast_recompute": choice.norm_cast_recompute,
            "mask_compression": choice.fa_mask_compression}


def fast_attention_core(dims, lay: Layout) -> bool:
    """Whether DotProductAttention runs models/attention_core.py's core: fp32 scores and softmax
    (the additive mask) and no shard strategies (shard_model switches to the select path). Its
    backward recomputes the scores from q and k: it holds q, k, v (repeated) and the output, and
    with dropout the forward's float mask."""
    from petrun.models.shapes import DTYPE_BYTES
    return (not lay.flash_attention and DTYPE_BYTES[dims.compute_dtype] == 4
            and DTYPE_BYTES[dims.softmax_dtype] == 4 and not lay.strategies)


def recompute_applied(device_target: str) -> bool:
    """Whether recompute_config's saving is counted. build_model applies recompute_plan's
    cell.recompute() calls on every device (MindSpore's recompute pass runs in graph mode on CPU
    too; tests/models/test_recompute.py), but on CPU it saves nothing: MindSpore's CPU runtime
    keeps the recomputed tensors as well, and full recompute measured +36% peak RSS
    (benchmarks/bench_recompute.py). So the planner counts it on accelerators only."""
    return device_target != "CPU"


def recompute_plan(cfg, device_target: str = "CPU", pp: int | None = None) -> tuple:
    """The per-layer recompute plan (petrun.models.recompute.recompute_plan) for cfg on
    device_target: recompute_config read as MindFormers r1.3 reads it, layers split over `pp`
    stages (default: the layout's), FlashAttention as the kernels the model gets. Both the
    planner and build_model call this, so what is counted is what is applied."""
    from petrun.models.recompute import plan_for_model_config
    mc = cfg.get("model.model_config") or {}
    family = _FAMILY.get(str(mc.get("type") or ""))
    if family is None or not mc.get("num_layers"):
        return ()
    if pp is None:
        pp = layout_from_config(cfg, None, device_target).pp
    flash = kernel_paths(mc, device_target)["flash_attention"]
    return plan_for_model_config(family, cfg.get("recompute_config") or {}, mc, pp, flash)


def layout_from_config(cfg, devices: int | None = None, device_target: str = "CPU") -> Layout:
    """The layout `cfg` runs with; `devices` (petrun plan --devices) re-sizes data parallel, and
    devices=1 means a single process whatever use_parallel says."""
    pc = cfg.get("parallel_config") or {}
    par = cfg.get("parallel") or {}
    rc = cfg.get("recompute_config") or {}
    mc = cfg.get("model.model_config") or {}
    use_parallel = devices > 1 if devices else bool(cfg.get("use_parallel"))
    lay = Layout(device_target=device_target)
    paths = kernel_paths(mc, device_target)
    lay.flash_attention, lay.fused_norm = paths["flash_attention"], paths["fused_norm"]
    lay.norm_cast_recompute = paths["norm_cast_recompute"]
    lay.mask_compression = paths["mask_compression"]
    lay.recompute_requested = (_truthy(rc.get("recompute", False))
                               or _truthy(rc.get("select_recompute", False)))
    if not use_parallel:
        return _with_recompute(lay, cfg)
    mode = par.get("parallel_mode", 1)
    dp = int(pc.get("data_parallel", 1) or 1)
    if mode in _DATA_PARALLEL_MODES:
        mp = pp = 1
    else:
        mp = int(pc.get("model_parallel", 1) or 1)
        pp = int(pc.get("pipeline_stage", 1) or 1)
    cp = int(pc.get("context_parallel", 1) or 1)
    if devices:
        if devices % (mp * pp * cp):
            raise UserError(f"{devices} devices cannot hold model_parallel {mp} × pipeline_stage "
                            f"{pp}" + (f" × context_parallel {cp}" if cp > 1 else ""),
                            key="parallel_config",
                            fix=f"use a multiple of {mp * pp * cp} devices, or change the layout")
        dp = devices // (mp * pp * cp)
    lay.dp, lay.mp, lay.pp = dp, mp, pp
    lay.strategies = mode not in _DATA_PARALLEL_MODES   # parallel.shard.shard_for_config's rule
    lay.devices = dp * mp * pp * cp
    lay.micro_batch_num = int(pc.get("micro_batch_num", 1) or 1) if pp > 1 else 1
    lay.optimizer_shard = bool(par.get("enable_parallel_optimizer", pc.get("optimizer_shard", False)))
    # MindFormers r1.3's Llama2, ChatGLM2 and GPT-2 never pass parallel_optimizer_comm_recompute
    # to recompute() (LayerSetting.set passes only recompute_slice_activation; only T5 passes
    # it), and MindSpore 2.10's Cell.recompute only warns that zero3 replaced it: the gathered
    # copy stays, so comm_recompute stays False (petrun/models/recompute.py).
    lay.comm_recompute = False
    opt_cfg = par.get("parallel_optimizer_config") or {}
    lay.shard_threshold_kb = int(opt_cfg.get("parallel_optimizer_threshold", 64) or 0)
    lay.shard_size = int(opt_cfg.get("optimizer_weight_shard_size", -1) or -1)
    lay.grad_accum_shard = bool(opt_cfg.get("gradient_accumulation_shard", False))
    lay.vocab_emb_dp = bool(pc.get("vocab_emb_dp", True))
    lay.seq_parallel = bool(pc.get("use_seq_parallel", False))
    return _with_recompute(lay, cfg)


def _with_recompute(lay: Layout, cfg) -> Layout:
    if recompute_applied(lay.device_target):
        plans = recompute_plan(cfg, lay.device_target, lay.pp)
        lay.recompute_layers = plans
        lay.recompute = bool(plans) and all(p.full for p in plans)
        lay.select_recompute = any(p.select for p in plans)
    return lay
