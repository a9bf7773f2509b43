"""Per-device memory and step time of a run, from the config alone (no MindSpore, no model).

Memory of one device at its peak (the pipeline stage that needs most):

  weights      every parameter in its dtype; block linears ÷ model_parallel, embedding and lm_head
               ÷ model_parallel when vocab-parallel (vocab_emb_dp False), layers ÷ pipeline_stage
  gradients    trainable parameters only, in their dtype (LoRA: the adapters; full finetune: all)
  optimizer    AdamW m and v for trainable parameters: fp32 for FP32StateAdamWeightDecay, else the
               parameter dtype
  parallel optimizer (enable_parallel_optimizer): what MindSpore shards, per its docs and source:
               only parameters the optimizer updates (step_parallel.cc SetParallelShape: "only
               trainable parameters need parallel optimizer"), only slices of at least
               parallel_optimizer_threshold KB whose dim 0 divides by the shard group, over the
               ranks holding the same slice (dp, and mp too for a weight mp leaves whole), or
               optimizer_weight_shard_size of them. It splits the weights and the optimizer
               states (optimizer_level level1, MindSpore's default and the only level petrun's
               schema passes); a sharded weight's gradient arrives as its slice (AllGather's
               backward is a ReduceScatter); gradient accumulation buffers stay whole unless
               gradient_accumulation_shard (what level2 "also shards gradients" means: the
               context.py docstring names level2 its replacement). A sharded weight is
               all-gathered before its layer runs, in compute precision when the layer casts
               it down, and the gathered copy is kept for backward (MindFormers r1.3's three
               models never pass parallel_optimizer_comm_recompute on). See plan/params.py.
  activations  what backward needs, per layer and micro-batch (`layer_inventory`, as the selected
               path holds it: composite, fp32 core or FlashAttention, composite or fused RmsNorm),
               × layers of the stage × micro-batches in flight
               (pipeline_stage of them on the first stage with 1F1B), per layer as its
               recompute plan (layout.recompute_plan, what build_model applies) leaves it
  head         logits [batch, seq, vocab] in compute dtype, their fp32 copy, the log-softmax kept
               for backward and its gradient (÷ model_parallel when vocab-parallel)
  runtime      fixed cost of the framework (see the CPU calibration below)

KV cache (predict): 2 · layers · kv_heads · head_dim · seq_length · batch · compute bytes.

CPU calibration. MindSpore's CPU graph runtime keeps far more than the framework-ideal set above
(it does little buffer reuse across forward and backward), so on CPU the analytic activation and
head terms are scaled by factors fitted to peak RSS measured with the real CLI
(benchmarks/plan_vs_measured.py, table in benchmarks/RESULTS.md):
  peak RSS = CPU_RUNTIME + CPU_PER_LAYER · layers + weights
             + CPU_STATE_FACTOR · (gradients + optimizer)
             + CPU_SCORES_FACTOR · attention scores + CPU_ACT_FACTOR · other activations
             + CPU_HEAD_FACTOR · head
On Ascend the analytic terms are used as they are plus a fixed ASCEND_RUNTIME (an assumption for
HCCL buffers and workspace; not measured here).

FLOPs per token: forward 2·N_matmul + 4·s·(heads·head_dim)·L (QKᵀ and PV over the full square;
halved under flash attention, whose next_tokens 0 band skips blocks above the diagonal); backward
twice the forward work, + 2·N_trainable, + QKᵀ again in the fp32 core; a recomputed layer one more
forward (reference/feasibility.md §2 MFU_4N).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from petrun.errors import UserError
from petrun.models.shapes import (DTYPE_BYTES, Dims, ParamSpec, family, known_families,
                                  model_dims, param_shapes)
from petrun.plan import device as dev
from petrun.plan.layout import Layout, fast_attention_core, layout_from_config
from petrun.plan.params import layer_of as _layer_of
from petrun.plan.params import param_memory, stages_of
from petrun.plan.pet import PetShapes, apply_pet_shapes

GiB = 2 ** 30
MiB = 2 ** 20

# ---- CPU calibration: least squares over the "fit" runs of benchmarks/plan_vs_measured.py
# (`--from-json --fit`): 9 real `petrun finetune` runs of Llama2 (hidden 64-512, 2-8 layers,
# vocab 512-32000, seq 256-1024, batch 1-8, LoRA and full finetune) on MindSpore 2.10 CPU, peak
# RSS by wait4; refitted 2026-12-03 once CPU cells broadcast first (models/broadcast.py: about
# half the old peaks were MindSpore's index tables). The table is in benchmarks/RESULTS.md. ----
CPU_RUNTIME = 544 * MiB           # MindSpore import + context + dataset pipeline + CLI
CPU_PER_LAYER = 32 * MiB          # compiled graph and kernel workspace per decoder layer
CPU_ACT_FACTOR = 2.83             # measured ÷ analytic saved-for-backward set (non-score part)
CPU_SCORES_FACTOR = 8.0           # score tensors (fp16 compute only now; fitted 2026-12-02)
CPU_HEAD_FACTOR = 0.84            # same for the logits / loss tensors
CPU_STATE_FACTOR = 1.0            # gradients + AdamW states: exactly as counted (not fitted)
# ---- Ascend assumption ----
ASCEND_RUNTIME = 2 * GiB
# The Ascend figures are analytic (MindSpore's saved-for-backward sets of the selected kernels)
# and cannot be measured here; the CPU ones are within ±25% of measured peaks. Within this band
# below the estimate a run "may fit": pre-flight warns instead of refusing it.
ACCELERATOR_UNCERTAINTY = 0.25

TRAIN_MODES = ("finetune", "train")


@dataclass
class Estimate:
    run_mode: str
    device_target: str
    arch: str
    layout: Layout
    batch_size: int                  # per data-parallel rank and micro-batch
    seq_length: int
    grad_accum: int
    pet_type: str | None
    params_total: int
    params_trainable: int
    params_by_dtype: dict            # dtype -> [count, bytes] for the whole model
    weights: float                   # bytes per device (peak stage)
    gradients: float
    optimizer: float
    activations: float
    head: float
    kv_cache: float
    runtime: float
    load_extra: float                # checkpoint copy held while loading (CPU)
    per_layer: dict                  # per-layer activation bytes, per micro-batch
    per_layer_recompute: float
    peak: float
    stage: int                       # the pipeline stage the peak belongs to
    flops_per_step: float            # on one device
    step_time_s: float
    tokens_per_s: float              # whole job
    peak_flops: float
    peak_source: str
    mfu: float
    terms: dict = field(default_factory=dict)   # unscaled analytic terms (for calibration)
    budget: float | None = None
    budget_source: str = ""
    notes: list = field(default_factory=list)

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.peak <= self.budget

    @property
    def verdict(self) -> str | None:
        """'fits', 'tight' (over the budget, but not beyond the accelerator estimate's
        uncertainty), 'over', or None without a budget. CPU estimates are calibrated: no band."""
        if self.budget is None:
            return None
        if self.peak <= self.budget:
            return "fits"
        if self.device_target != "CPU" and self.peak * (1 - ACCELERATOR_UNCERTAINTY) <= self.budget:
            return "tight"
        return "over"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fits"] = self.fits
        d["verdict"] = self.verdict
        return d


# --------------------------------------------------------------------------------------- inputs
def model_of(cfg, device_target: str):
    """(arch, typed model config, parameter table, dims) for cfg's model section."""
    from petrun.models.registry import build_config
    arch = cfg.get("model.arch.type")
    mc = build_config(cfg.get("model") or {})
    if family(mc.type) is None:
        raise UserError(f"the planner has no parameter table for {mc.type} ({arch})",
                        key="model.model_config.type",
                        fix=f"add one in petrun/models/shapes.py (known: "
                            f"{', '.join(known_families())}), or run with --skip-preflight")
    return arch, mc, param_shapes(mc, device_target), model_dims(mc, device_target)


def pet_of(cfg, specs, dims, arch, device_target, run_mode) -> PetShapes:
    raw = cfg.get("model.model_config.pet_config")
    if not raw:
        shapes = apply_pet_shapes(specs, None, dims, arch, device_target)
    else:
        from petrun.pet import parse_pet_config
        shapes = apply_pet_shapes(specs, parse_pet_config(raw), dims, arch, device_target)
    if run_mode not in TRAIN_MODES:
        shapes.trainable = []
    return shapes


def batch_of(cfg, run_mode: str) -> int:
    if run_mode == "predict":
        return int(cfg.get("model.model_config.batch_size") or 1)
    if run_mode == "eval":
        return int(cfg.get("eval_dataset.batch_size") or cfg.get("runner_config.batch_size") or 1)
    return int(cfg.get("runner_config.batch_size") or cfg.get("train_dataset.batch_size") or 1)


# --------------------------------------------------------------------------------- activations
# Which tensor each linear layer reads, by the last two components of its path: the weight's
# gradient (or a LoRA adapter on it) keeps that tensor alive for backward.
INPUT_OF = {
    # Llama
    "attention.wq": "norm1", "attention.wk": "norm1", "attention.wv": "norm1",
    "attention.wo": "attn", "feed_forward.w1": "norm2", "feed_forward.w3": "norm2",
    "feed_forward.w2": "ffn_mid", "attention_norm.weight": "normw1", "ffn_norm.weight": "normw2",
    # ChatGLM2
    "self_attention.query_key_value": "norm1", "self_attention.dense": "attn",
    "mlp.dense_h_to_4h": "norm2", "mlp.dense_4h_to_h": "ffn_mid",
    "input_layernorm.weight": "normw1", "post_attention_layernorm.weight": "normw2",
    # GPT2
    "attention.dense1": "norm1", "attention.dense2": "norm1", "attention.dense3": "norm1",
    "attention.projection": "attn", "output.mapping": "norm2", "output.projection": "ffn_mid",
    "layernorm1.gamma": "normw1", "layernorm1.beta": "normw1", "layernorm2.gamma": "normw2",
    "layernorm2.beta": "normw2",
}


def _kept_inputs(pet: PetShapes, specs: dict[str, ParamSpec],
                 lora_dropout: float) -> tuple[set, list]:
    """(input kinds kept for weight gradients, LoRA adapters of one layer as (in, rank)).

    A LoRA adapter's A gradient needs the adapter's input: the layer input itself, or with
    lora_dropout its own dropped-out copy (counted with the adapters instead)."""
    kinds, adapters = set(), []
    first = next((_layer_of(n) for n in pet.trainable if _layer_of(n) is not None), None)
    for name in pet.trainable:
        if _layer_of(name) != first:
            continue
        parts = name.split(".")
        if parts[-1].startswith("mindpet_delta_lora"):
            if parts[-1].endswith("_a"):   # A is [rank, in] whichever way the base is stored
                adapters.append((pet.params[name].shape[1], pet.params[name].shape[0]))
            if lora_dropout:
                continue
            key = ".".join(parts[-3:-1])
        else:
            key = ".".join(parts[-3:-1]) if parts[-1] in ("weight", "bias") else ".".join(parts[-2:])
            if key not in INPUT_OF:
                key = ".".join(parts[-2:])
        kinds.add(INPUT_OF.get(key, "norm1"))
    return kinds, adapters


def layer_inventory(dims: Dims, pet: PetShapes, specs: dict, lay: Layout, tokens: int,
                    seq: int, lora_dropout: float = 0.0,
                    select: tuple = ()) -> dict[str, float]:
    """Bytes one decoder layer keeps for backward for `tokens` (batch · sequence) tokens that
    each attend to `seq` keys, as the code path `lay` selects (layout.kernel_paths) holds them.

    Per token, with c/r/sm/nb the compute, residual, softmax and norm bytes, q = heads·head_dim,
    kv = kv_heads·head_dim (÷ model_parallel where heads split):
      norms        two per layer, each its input cast to the norm dtype (Llama's fused norm:
                   the input itself, its cast being recomputed) plus a per-token
                   statistic: composite RMSNorm (rsqrt, nb) and the fused RmsNorm primitive
                   (rstd, fp32) alike; LayerNorm (one primitive everywhere) mean and variance
      fp32 attention core (unsharded fp32, models/attention_core.py): q, the repeated k, v and
                   the output, q·c each; no scores (recomputed), with dropout its float mask
      composite attention (sharded or low precision): q and the repeated kv, q·c each; the
                   softmax output heads·seq·sm, its cast when the dtypes differ, and the
                   Select's bool condition heads·seq·1 when softmax is not fp32
      flash attention (FlashAttentionScore): q, k, v as given (no repeat), its output,
                   softmax_max/sum (heads·8 fp32 each), the uint8 mask (seq bytes, not per head)
      attention dropout: mask (bit-packed on Ascend) and dropped probs; FA: the bit mask only
      ffn          SwiGLU: gate, up and silu(gate), f·c each; GELU MLP: the GELU input
      weight-grad inputs: each trainable weight's input (a norm weight's: the normalised
                   tensor, composite RMSNorm only; fused norms recompute it)
    Rotary embedding holds nothing: composite or fused, its backward reads only cos/sin.
    select (the layer's select recompute, petrun.models.recompute): attention.core: no scores,
      q, k, v kept as projected (q + 2·kv, before rotary and the kv repeat), not 3·q;
      feed_forward.act: no silu(gate); feed_forward.mul: no product kept for w2's gradient"""
    c = DTYPE_BYTES[dims.compute_dtype]
    r = DTYPE_BYTES[dims.residual_dtype]
    sm = DTYPE_BYTES[dims.softmax_dtype]
    nb = next((DTYPE_BYTES[s.dtype] for s in specs.values() if s.kind == "norm"), 4)
    mask = 1 / 8 if lay.device_target == "Ascend" else 1   # DropoutGenMask packs bits
    h, f, mp = dims.hidden, dims.ffn, lay.mp
    q = dims.heads * dims.head_dim
    kv = dims.kv_heads * dims.head_dim
    hs = h / mp if lay.seq_parallel else h
    inv: dict[str, float] = {}
    stat = 8 if dims.norm == "layer" else (4 if lay.fused_norm else nb)
    inv["norm inputs"] = 2 * (hs * (r if lay.norm_cast_recompute else nb) + stat)
    if lay.flash_attention:
        inv["attention q/k/v/out"] = (2 * q + 2 * kv) * c / mp
        inv["attention scores"] = dims.heads * 2 * 8 * 4 / mp
        if dims.dropout:
            inv["attention scores"] += dims.heads * seq * (1 / 8) / mp
        # each layer's uint8 (B, 1, S, S') mask FlashAttentionScoreGrad reads (per layer, though
        # CSE may share it); mask compression: one constant 2048² mask instead, not per token
        inv["attention mask"] = 0 if lay.mask_compression else seq * 1
    elif fast_attention_core(dims, lay):   # recomputes the scores; q, k, v repeated + output
        inv["attention q/k/v/out"] = 4 * q * c / mp
        inv["attention scores"] = dims.heads * seq * c / mp if dims.dropout else 0  # its mask
    else:
        inv["attention q/k/v/out"] = 3 * q * c / mp
        if dims.dropout:
            probs = sm + mask + c                       # softmax out, mask, dropped probs
        else:
            probs = sm + (c if c != sm else 0)          # softmax out, its cast
        probs += 1 if sm != 4 else 0                    # Select's condition (non-fp32 softmax)
        inv["attention scores"] = dims.heads * seq * probs / mp
    if not lay.flash_attention and "attention.core" in select:
        inv["attention scores"] = 0.0
        inv["attention q/k/v/out"] = (q + 2 * kv) * c / mp
    if dims.dropout:
        inv["dropout masks"] = 2 * hs * mask
    inv["ffn"] = ((3 - ("feed_forward.act" in select)) if dims.gated_ffn else 1) * f * c / mp
    kinds, adapters = _kept_inputs(pet, specs, lora_dropout)
    if "feed_forward.mul" in select:
        kinds = kinds - {"ffn_mid"}
    normw = h * r if dims.norm == "rms" and not lay.fused_norm else 0
    size = {"norm1": h * c, "norm2": h * c, "attn": 0 if lay.flash_attention else q * c / mp,
            "ffn_mid": f * c / mp, "normw1": normw, "normw2": normw}
    inv["weight-grad inputs"] = sum(size[k] for k in kinds)
    if adapters:
        extra = sum(rank * c for _, rank in adapters)
        if lora_dropout:
            # the dropped-out input and its mask (bit-packed on Ascend, input dtype on CPU)
            mask = c if lay.device_target == "CPU" else 1 / 8
            extra += sum(n_in * (c + mask) for n_in, _ in adapters)
        inv["lora"] = extra
    return {k: v * tokens for k, v in inv.items() if v}


def head_bytes(dims: Dims, lay: Layout, tokens: int, training: bool) -> float:
    c = DTYPE_BYTES[dims.compute_dtype]
    vocab = dims.vocab / (lay.mp if not lay.vocab_emb_dp else 1)
    per = c + 4 + 4 + (4 if training else 0)
    return tokens * vocab * per + tokens * dims.hidden * (DTYPE_BYTES[dims.residual_dtype] + c)


# ------------------------------------------------------------------------------------- flops
def step_flops(dims: Dims, pet: PetShapes, specs: dict, tokens: float, seq: int, training: bool,
               lay: Layout) -> float:
    n_mm = sum(s.size for s in pet.params.values() if s.matmul or s.kind == "lora")
    if dims.tied_embeddings:     # the tied head is a matmul with the embedding table
        n_mm += dims.vocab * dims.hidden
    n_train_mm = sum(pet.params[n].size for n in pet.trainable
                     if pet.params[n].matmul or pet.params[n].kind == "lora")
    attn = 4 * seq * dims.heads * dims.head_dim * dims.num_layers * (0.5 if lay.flash_attention else 1)
    fwd = 2 * n_mm + attn
    if not training:
        return tokens * fwd
    total = fwd + (2 * n_mm + 2 * attn) + 2 * n_train_mm
    total += attn / 2 if fast_attention_core(dims, lay) else 0
    plans = lay.recompute_layers or ()
    if plans:   # recomputed layers run their forward again (full), or their scores (select)
        n = len(plans)
        total += (fwd * sum(p.full for p in plans)
                  + attn * sum("attention.core" in p.select for p in plans)) / n
    return tokens * total


# ----------------------------------------------------------------------------------- estimate
def stage_activations(layers: list, recompute_layer: float, inflight: int,
                      training: bool) -> tuple:
    """(score bytes, other bytes) a pipeline stage holds at its peak; `layers`: (score, other,
    fully recomputed) per layer, select recompute applied in the inventory. Forward only: one
    layer's tensors at a time. Training, per micro-batch in flight: every layer's saved set, but
    a fully recomputed layer keeps its input (`recompute_layer`) and is rebuilt one at a time."""
    if not training:
        return max(s for s, _, _ in layers), max(o for _, o, _ in layers)
    kept = [(s, o) for s, o, full in layers if not full]
    rebuilt = [(s, o) for s, o, full in layers if full]
    scores = sum(s for s, _ in kept) + max((s for s, _ in rebuilt), default=0.0)
    other = (sum(o for _, o in kept) + len(rebuilt) * recompute_layer
             + max((o for _, o in rebuilt), default=0.0))
    return scores * inflight, other * inflight


def _scale(target: str) -> dict[str, float]:
    """Multipliers from the analytic activation terms to what the device really holds."""
    if target == "CPU":
        return {"attention scores": CPU_SCORES_FACTOR, "head": CPU_HEAD_FACTOR,
                "other": CPU_ACT_FACTOR, "state": CPU_STATE_FACTOR}
    return {"attention scores": 1.0, "head": 1.0, "other": 1.0, "state": 1.0}


def estimate(cfg, *, run_mode: str | None = None, devices: int | None = None,
             device_target: str | None = None, peak_tflops: float | None = None,
             mfu: float | None = None) -> Estimate:
    """Memory and time of `cfg` as configured (or on `device_target` / `devices`)."""
    run_mode = run_mode or cfg.get("run_mode") or "finetune"
    training = run_mode in TRAIN_MODES
    target = device_target or (cfg.get("context.device_target") or "CPU")
    cpu = target == "CPU"
    arch, _, specs, dims = model_of(cfg, target)
    pet = pet_of(cfg, specs, dims, arch, target, run_mode)
    lay = layout_from_config(cfg, devices, target)
    batch = batch_of(cfg, run_mode)
    seq = int(dims.seq_length)
    accum = int(cfg.get("runner_config.gradient_accumulation_steps") or 1) if training else 1
    # Prompt methods put virtual tokens in front of every sequence; prefix methods add key/value
    # slots every query attends to.
    layer_seq = seq + pet.virtual_tokens
    kv_len = layer_seq + pet.prefix_tokens
    tokens = batch * seq
    opt_type = str(cfg.get("optimizer.type") or "AdamWeightDecay")
    raw_pet = cfg.get("model.model_config.pet_config") or {}
    lora_dropout = float(raw_pet.get("lora_dropout", 0.0) or 0.0) if (
        training and pet.pet_type == "lora" and isinstance(raw_pet, dict)) else 0.0

    # Parameters by dtype (whole model), then per stage on one device.
    by_dtype: dict[str, list] = {}
    for spec in pet.params.values():
        entry = by_dtype.setdefault(spec.dtype, [0, 0])
        entry[0] += spec.size
        entry[1] += spec.nbytes
    stages = stages_of(pet.params, dims, lay.pp, cfg.get("model.model_config.offset") or 0)
    trainable = set(pet.trainable)
    w, g, o = param_memory(pet, dims, lay, stages, opt_type, accum)
    # Activations per layer and micro-batch (analytic), then per stage.
    per_layer = layer_inventory(dims, pet, pet.params, lay, batch * layer_seq, kv_len, lora_dropout)
    if not training:                 # forward only: no saved tensors, one layer's at a time
        per_layer.pop("weight-grad inputs", None)
    from petrun.parallel.strategy import layers_per_stage as stage_layers
    stage_counts = stage_layers(dims.num_layers, lay.pp, cfg.get("model.model_config.offset") or 0)
    # a recomputed layer's kept input, split over mp by seq parallel or recompute_slice_activation
    sliced = lay.seq_parallel or any(p.slice_activation for p in lay.recompute_layers)
    recompute_layer = batch * layer_seq * dims.hidden * DTYPE_BYTES[dims.residual_dtype] / (
        lay.mp if sliced else 1)
    head = head_bytes(dims, lay, tokens, training)
    kv_cache = 0.0
    if run_mode == "predict":
        kv_cache = (2 * dims.num_layers * dims.kv_heads * dims.head_dim * kv_len * batch
                    * DTYPE_BYTES[dims.compute_dtype] / lay.mp / lay.pp)
    scale = _scale(target)

    def split(inv):
        return inv.get("attention scores", 0.0), sum(inv.values()) - inv.get("attention scores", 0)

    # Each layer's inventory under its own recompute plan (layout.recompute_plan, the plan
    # build_model applies); a layer without a plan (no recompute) holds the plain set.
    invs: dict[tuple, tuple] = {(): split(per_layer)}
    rows = []
    for p in list(lay.recompute_layers) or [None] * dims.num_layers:
        sel = tuple(p.select) if (p is not None and training) else ()
        if sel not in invs:
            invs[sel] = split(layer_inventory(dims, pet, pet.params, lay, batch * layer_seq,
                                              kv_len, lora_dropout, sel))
        rows.append((*invs[sel], bool(p is not None and p.full and training)))
    starts = [sum(stage_counts[:i]) for i in range(lay.pp)]

    best = None
    for st in range(lay.pp):
        inflight = min(lay.pp - st, lay.micro_batch_num) if lay.pp > 1 else 1
        stage_rows = rows[starts[st]:starts[st] + stage_counts[st]] or [(0.0, 0.0, False)]
        n_scores, n_other = stage_activations(stage_rows, recompute_layer, inflight, training)
        hd = head if st == lay.pp - 1 else 0.0
        act = scale["attention scores"] * n_scores + scale["other"] * n_other
        total = w[st] + scale["state"] * (g[st] + o[st]) + act + scale["head"] * hd + kv_cache
        if best is None or total > best[0]:
            best = (total, st, act, hd, n_scores, n_other)
    _, stage, act, hd, n_scores, n_other = best
    layers_per_stage = stage_counts[stage]
    runtime = (CPU_RUNTIME + CPU_PER_LAYER * layers_per_stage) if cpu else ASCEND_RUNTIME
    peak = best[0] + runtime
    terms = {"fixed": w[stage] + kv_cache, "state": g[stage] + o[stage], "layers": layers_per_stage,
             "attention scores": n_scores, "other": n_other, "head": hd}

    load_extra = 0.0
    if cpu and cfg.get("load_checkpoint"):
        # petrun reads the whole checkpoint into host memory, then copies it into the parameters.
        load_extra = sum(s.nbytes for n, s in pet.params.items() if n not in trainable) / lay.pp
        peak = max(peak, w[stage] + load_extra + runtime)

    # Step time from FLOPs.
    global_tokens = tokens * lay.dp * accum * (lay.micro_batch_num if lay.pp > 1 else 1)
    flops_device = step_flops(dims, pet, pet.params, global_tokens * layer_seq / seq, kv_len,
                              training, lay) / lay.devices
    pk, pk_src = dev.peak_flops(target, dims.compute_dtype, peak_tflops)
    eff = dev.efficiency(target, mfu)
    step_time = flops_device / (pk * eff)
    notes = []
    if lay.recompute_requested and not (lay.recompute or lay.select_recompute
                                        or any(p.full for p in lay.recompute_layers)):
        notes.append("recompute_config saves nothing counted here: on CPU MindSpore keeps the "
                     "recomputed tensors too; elsewhere its plan selects no op of this model")
    if not cpu:
        paths = [("FlashAttention" if lay.flash_attention else "composite attention "
                  "(seq×seq scores held)")]
        if dims.norm == "rms":
            paths.append("fused RmsNorm" if lay.fused_norm else "composite RMSNorm")
        notes.append(f"{target}: {', '.join(paths)}, as use_flash_attention/fused_rms_norm select "
                     f"them; {ASCEND_RUNTIME / GiB:.0f} GiB runtime overhead assumed")
    per_layer_scaled = {k: v * scale["attention scores" if k == "attention scores" else "other"]
                        for k, v in per_layer.items()}
    return Estimate(
        run_mode=run_mode, device_target=target, arch=arch, layout=lay, batch_size=batch,
        seq_length=seq, grad_accum=accum, pet_type=pet.pet_type, params_total=pet.total_count,
        params_trainable=pet.trainable_count if training else 0, params_by_dtype=by_dtype,
        weights=w[stage], gradients=scale["state"] * g[stage],
        optimizer=scale["state"] * o[stage], activations=act,
        head=scale["head"] * hd, kv_cache=kv_cache, runtime=runtime, load_extra=load_extra,
        per_layer=per_layer_scaled, per_layer_recompute=scale["other"] * recompute_layer,
        peak=peak, stage=stage, flops_per_step=flops_device, step_time_s=step_time,
        tokens_per_s=global_tokens / step_time if step_time else 0.0, peak_flops=pk,
        peak_source=pk_src, mfu=eff, terms=terms, notes=notes)


def with_budget(est: Estimate, cfg, device_memory: int | None = None, host: bool = True) -> Estimate:
    """Attach the memory budget: --device-memory, else max_device_memory (accelerators) or the
    RAM available now (CPU; all local processes of a CPU data-parallel job share it)."""
    if device_memory:
        est.budget, est.budget_source = float(device_memory), "--device-memory"
    elif est.device_target == "CPU":
        avail = dev.available_ram() if host else None
        if avail is not None:
            est.budget = float(avail) / max(est.layout.devices, 1)
            est.budget_source = "RAM available now" + (
                f" ÷ {est.layout.devices} processes" if est.layout.devices > 1 else "")
    else:
        size = dev.parse_size(cfg.get("context.max_device_memory"))
        if size:
            est.budget, est.budget_source = float(size), "context.max_device_memory"
    return est
