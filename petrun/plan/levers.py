"""What to change to make a run fit: each lever is a set of overrides, re-estimated and ranked.

A lever is only offered where the model really does it on the device (recompute as MindFormers
applies it, petrun/models/recompute.py; sharding only on accelerators) and is sized by running the
whole estimate again on the changed config, so its saving includes every knock-on effect (e.g.
model parallel also splits activations).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from petrun.errors import UserError
from petrun.plan.estimator import Estimate, estimate
from petrun.plan.layout import recompute_applied

_MIN_SAVING = 0.01    # ignore levers that save less than 1% of the peak


@dataclass
class Lever:
    what: str
    overrides: list[str]
    peak: float
    saves: float
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _candidates(cfg, est: Estimate) -> list[tuple[str, list[str], str]]:
    lay = est.layout
    cpu = est.device_target == "CPU"
    mc = cfg.get("model.model_config") or {}
    out: list[tuple[str, list[str], str]] = []
    if not cpu:
        # Only what the model really does on this device: recompute where the models apply it
        # (layout.recompute_applied), FlashAttention on Ascend (layout.kernel_paths). Select
        # recompute drops the scores only in Llama's composite attention (recompute_plan).
        if recompute_applied(est.device_target) and not lay.recompute:
            out.append(("recompute every layer", ["recompute_config.recompute=True"],
                        "~1/3 more compute per step"))
            if (not lay.select_recompute and not lay.flash_attention
                    and mc.get("type") == "LlamaConfig"):
                out.append(("recompute the attention scores",
                            ["recompute_config.select_recompute=True"], ""))
        if est.device_target == "Ascend" and not lay.flash_attention:
            out.append(("flash attention (no seq×seq scores kept)",
                        ["model.model_config.use_flash_attention=True"],
                        "seq_length must be a multiple of 16"))
        heads = mc.get("num_heads") or mc.get("num_attention_heads") or 0
        if lay.dp >= 2 and heads and heads % (lay.mp * 2) == 0:
            out.append((f"model_parallel {lay.mp * 2} (data_parallel {lay.dp // 2})",
                        [f"parallel_config.model_parallel={lay.mp * 2}",
                         f"parallel_config.data_parallel={lay.dp // 2}"],
                        "same devices; halves the global batch"))
        if lay.dp >= 2 and not lay.optimizer_shard and est.params_trainable:
            out.append(("shard optimizer states over data parallel",
                        ["parallel.enable_parallel_optimizer=True"], ""))
        if str(mc.get("param_init_type", "")) == "float32" and est.pet_type:
            out.append(("keep the frozen weights in bfloat16",
                        ["model.model_config.param_init_type=bfloat16"],
                        "the adapters train as usual"))
    if est.run_mode in ("finetune", "train", "eval") and est.batch_size >= 2:
        half = est.batch_size // 2
        accum = est.grad_accum * 2
        out.append((f"batch_size {half}",
                    [f"runner_config.batch_size={half}"] if est.run_mode != "eval"
                    else [f"eval_dataset.batch_size={half}"],
                    f"add runner_config.gradient_accumulation_steps={accum} to keep the global batch"
                    if est.run_mode != "eval" else ""))
    if est.seq_length >= 256:
        half = est.seq_length // 2
        out.append((f"seq_length {half}", [f"model.model_config.seq_length={half}"],
                    "the data must be tokenized to the new length"))
    if est.run_mode in ("finetune", "train") and est.pet_type is None:
        from petrun.models.registry import known_archs, arch_entry
        targets = arch_entry(est.arch).lora_targets if est.arch in known_archs() else None
        if targets:
            out.append(("LoRA instead of a full finetune",
                        ["model.model_config.pet_config.pet_type=lora",
                         f"model.model_config.pet_config.target_modules={targets}"],
                        "only the adapters get gradients and optimizer state"))
    return out


def _variant(cfg, overrides: list[str]):
    """cfg with `overrides` applied and re-validated."""
    from petrun.config import with_overrides
    return with_overrides(cfg, overrides)


def levers(cfg, est: Estimate, **kwargs) -> list[Lever]:
    """Every applicable lever, biggest saving first. kwargs go to estimate (devices, ...)."""
    out = []
    for what, overrides, note in _candidates(cfg, est):
        try:
            other = estimate(_variant(cfg, overrides), run_mode=est.run_mode,
                             device_target=est.device_target, **kwargs)
        except UserError:
            continue
        saves = est.peak - other.peak
        if saves > _MIN_SAVING * est.peak:
            out.append(Lever(what, overrides, other.peak, saves, note))
    return sorted(out, key=lambda lv: -lv.saves)


def path_to_fit(cfg, est: Estimate, budget: float, max_steps: int = 4, **kwargs) -> list[Lever]:
    """Greedy: apply the biggest lever, re-rank, until the estimate fits `budget` (or give up).
    Returns the levers taken; empty when nothing on offer makes it fit."""
    taken: list[Lever] = []
    current_cfg, current = cfg, est
    for _ in range(max_steps):
        if current.peak <= budget:
            return taken
        options = levers(current_cfg, current, **kwargs)
        if not options:
            break
        best = options[0]
        taken.append(best)
        current_cfg = _variant(current_cfg, best.overrides)
        current = estimate(current_cfg, run_mode=est.run_mode, device_target=est.device_target,
                           **kwargs)
    return taken if current.peak <= budget else []
