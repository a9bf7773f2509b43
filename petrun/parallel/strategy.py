"""How petrun's models are cut across devices under dp × mp (× pp), as plain data. No MindSpore.

One table per model family maps parameter-name patterns to a *rule*:

    column      linear layer split on its output features (q/k/v, w1/w3, GLM2 qkv and h→4h, GPT2
                dense1-3 and mapping); its bias is split the same way
    row         linear layer split on its input features (wo, w2, GLM2 dense and 4h→h, GPT2
                projections); its bias is whole on every device
    vocab       embedding table / LM head split on the vocabulary, unless parallel_config
                vocab_emb_dp is True (MindFormers' default: then both are whole, data parallel)
    replicated  norms and position tables: whole on every device
    encoder     PET prompt/prefix encoders: whole, and computed unbatched (not split by dp)

LoRA follows its base: A [r, in] is split where the base splits its input (row-parallel base),
B [out, r] where the base splits its output (column-parallel base); an IA3 vector follows the
base's output (or, feed-forward, input) split. Bottleneck adapters are whole, in their layer's
stage.

From a rule, a Layout in MindSpore strategy-file terms (reference/feasibility.md §4):

    dev_matrix   one pipeline stage's devices as a row-major grid; petrun uses [dp, mp], so ranks
                 r and r+1 are model-parallel neighbours (rank = d·mp + m)
    tensor_map   per tensor dim, the grid axis that splits it, counted from the RIGHT
                 (0 = mp, 1 = dp), -1 = not split
    opt_shard    optimizer (ZeRO) sharding of dim 0 over the ranks that hold the same slice:
                 `size` ranks, `step` apart (MindSpore requires step = the product of the grid
                 dims right of the repeated axis)

Pipeline stages follow MindFormers' set_layer_stage_recompute (model_config.offset included):
embeddings on the first stage, the final norm and LM head on the last.

`cell_strategies` gives the per-primitive shard strategies (MindSpore in_strategy) that realise
these layouts in semi-auto parallel — derived from the layouts, so the ops and the strategy files
cannot disagree — plus the activation strategies of norms, attention and element-wise ops;
petrun/parallel/shard.py sets them on a built model.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from petrun.errors import UserError

MP_AXIS = 0   # tensor_map value for the model-parallel axis of dev_matrix [dp, mp]
DP_AXIS = 1
LORA_SUFFIXES = ("mindpet_delta_lora_a", "mindpet_delta_lora_b")
IA3_SUFFIX = "mindpet_delta_ia3_l"
BASE_FOLLOWERS = (*LORA_SUFFIXES, IA3_SUFFIX)   # PET parameters laid out after their base weight
PET_MARK = "mindpet_delta_"
_LAYER = re.compile(r"\.(?:layers|blocks)\.(\d+)\.")


# --------------------------------------------------------------------------- the parallel shape
@dataclass(frozen=True)
class ParallelDims:
    """The parallel shape of one job (semi-auto parallel terms)."""
    dp: int = 1
    mp: int = 1
    pp: int = 1
    micro_batch_num: int = 1
    vocab_emb_dp: bool = True
    optimizer_shard: bool = False
    optimizer_shard_size: int = -1       # parallel_optimizer_config.optimizer_weight_shard_size
    optimizer_threshold_kb: int = 64     # parallel_optimizer_config.parallel_optimizer_threshold

    @property
    def stage_devices(self) -> int:
        return self.dp * self.mp

    @property
    def devices(self) -> int:
        return self.dp * self.mp * self.pp

    def describe(self) -> str:
        text = f"dp {self.dp} × mp {self.mp} × pp {self.pp} = {self.devices} devices"
        if self.optimizer_shard:
            text += ", optimizer shard"
        if not self.vocab_emb_dp:
            text += ", vocab parallel"
        return text

    @classmethod
    def from_config(cls, cfg) -> "ParallelDims":
        """parallel_config + parallel of a semi-auto config (dp·mp·pp devices)."""
        pc = cfg.get("parallel_config") or {}
        par = cfg.get("parallel") or {}
        opt = par.get("parallel_optimizer_config") or {}

        def positive(key, value):
            try:
                n = int(value)
            except (TypeError, ValueError):
                n = 0
            if n < 1:
                raise UserError(f"must be a positive integer, got {value!r}",
                                key=f"parallel_config.{key}", file=cfg.origin(f"parallel_config.{key}"))
            return n

        dims = cls(
            dp=positive("data_parallel", pc.get("data_parallel", 1)),
            mp=positive("model_parallel", pc.get("model_parallel", 1)),
            pp=positive("pipeline_stage", pc.get("pipeline_stage", 1)),
            micro_batch_num=int(pc.get("micro_batch_num", 1) or 1),
            vocab_emb_dp=bool(pc.get("vocab_emb_dp", True)),
            optimizer_shard=bool(par.get("enable_parallel_optimizer", pc.get("optimizer_shard", False))),
            optimizer_shard_size=int(opt.get("optimizer_weight_shard_size", -1) or -1),
            optimizer_threshold_kb=int(opt.get("parallel_optimizer_threshold", 64) or 0))
        for key, value in (("context_parallel", pc.get("context_parallel", 1)),
                           ("expert_parallel", pc.get("expert_parallel", 1))):
            if int(value or 1) != 1:
                raise UserError(f"{key} {value} is not supported by petrun's models",
                                key=f"parallel_config.{key}", file=cfg.origin(f"parallel_config.{key}"),
                                fix=f"set parallel_config.{key}: 1")
        return dims


# --------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Layout:
    dev_matrix: tuple[int, ...]
    tensor_map: tuple[int, ...]
    opt_shard_size: int = 0
    opt_shard_step: int = 0
    stage: int = 0

    def splits(self) -> tuple[int, ...]:
        """How many pieces each tensor dim is cut into by model parallelism (no optimizer shard)."""
        n = len(self.dev_matrix)
        return tuple(1 if t == -1 else self.dev_matrix[n - 1 - t] for t in self.tensor_map)

    def shard_shape(self, full_shape) -> tuple[int, ...]:
        """The shape one device stores (optimizer shard included)."""
        shape = [d // s for d, s in zip(full_shape, self.splits())]
        if self.opt_shard_size > 0 and shape:
            shape[0] //= self.opt_shard_size
        return tuple(shape)

    def full_shape(self, shard_shape) -> tuple[int, ...]:
        shape = [d * s for d, s in zip(shard_shape, self.splits())]
        if self.opt_shard_size > 0 and shape:
            shape[0] *= self.opt_shard_size
        return tuple(shape)

    def slices(self, full_shape, local_rank: int) -> tuple[slice, ...]:
        """numpy index of `local_rank`'s piece (rank inside its pipeline stage, row-major grid)."""
        coords, rest = [], int(local_rank)
        for size in reversed(self.dev_matrix):
            coords.append(rest % size)
            rest //= size
        coords.reverse()
        n = len(self.dev_matrix)
        out = []
        for dim, (extent, t) in enumerate(zip(full_shape, self.tensor_map)):
            pieces, idx = (1, 0) if t == -1 else (self.dev_matrix[n - 1 - t], coords[n - 1 - t])
            size = extent // pieces
            start = idx * size
            if dim == 0 and self.opt_shard_size > 0:
                size //= self.opt_shard_size
                start += ((local_rank // self.opt_shard_step) % self.opt_shard_size) * size
            out.append(slice(start, start + size))
        return tuple(out)

    def is_split(self) -> bool:
        return any(s > 1 for s in self.splits()) or self.opt_shard_size > 1


@dataclass(frozen=True)
class Rule:
    kind: str                 # "column" | "row" | "vocab" | "replicated" | "encoder"
    orient: str = "out_in"    # weight stored [out, in] (Linear) or [in, out] (GPT2 LinearInOut)
    place: str = "layer"      # pipeline placement: "first" | "layer" | "last"


def _rules(*pairs) -> list[tuple[re.Pattern, Rule]]:
    return [(re.compile(p), r) for p, r in pairs]


FAMILIES: dict[str, list[tuple[re.Pattern, Rule]]] = {
    # reference/mindformers.md §6.1
    "llama2": _rules(
        (r"model\.tok_embeddings\.embedding_weight", Rule("vocab", place="first")),
        (r"model\.layers\.\d+\.attention\.w[qkv]\.(weight|bias)", Rule("column")),
        (r"model\.layers\.\d+\.attention\.wo\.(weight|bias)", Rule("row")),
        (r"model\.layers\.\d+\.feed_forward\.w[13]\.(weight|bias)", Rule("column")),
        (r"model\.layers\.\d+\.feed_forward\.w2\.(weight|bias)", Rule("row")),
        (r"model\.layers\.\d+\.(attention_norm|ffn_norm)\.weight", Rule("replicated")),
        (r"model\.norm_out\.weight", Rule("replicated", place="last")),
        (r"lm_head\.weight", Rule("vocab", place="last")),
    ),
    # §6.2 (qkv_concat False → wq/wk/wv, mlp_concat False → dense_left/dense_right)
    "glm2": _rules(
        (r"transformer\.embedding\.embedding_weight", Rule("vocab", place="first")),
        (r"transformer\.encoder\.layers\.\d+\.(input_layernorm|post_attention_layernorm)\.weight",
         Rule("replicated")),
        (r"transformer\.encoder\.layers\.\d+\.self_attention\.(query_key_value|wq|wk|wv)\.(weight|bias)",
         Rule("column")),
        (r"transformer\.encoder\.layers\.\d+\.self_attention\.dense\.(weight|bias)", Rule("row")),
        (r"transformer\.encoder\.layers\.\d+\.mlp\.(dense_h_to_4h|dense_left|dense_right)\.(weight|bias)",
         Rule("column")),
        (r"transformer\.encoder\.layers\.\d+\.mlp\.dense_4h_to_h\.(weight|bias)", Rule("row")),
        (r"transformer\.encoder\.final_layernorm\.weight", Rule("replicated", place="last")),
        (r"transformer\.output_layer\.weight", Rule("vocab", place="last")),
    ),
    # §6.3: projection/mapping weights are stored [in, out]; the LM head is tied to the table
    "gpt2": _rules(
        (r"backbone\.embedding\.word_embedding\.embedding_table", Rule("vocab", place="first")),
        (r"backbone\.embedding\.position_embedding\.embedding_table", Rule("replicated", place="first")),
        (r"backbone\.blocks\.\d+\.(layernorm1|layernorm2)\.(gamma|beta)", Rule("replicated")),
        (r"backbone\.blocks\.\d+\.attention\.dense[123]\.(weight|bias)", Rule("column")),
        (r"backbone\.blocks\.\d+\.attention\.projection\.(weight|bias)", Rule("row", "in_out")),
        (r"backbone\.blocks\.\d+\.output\.mapping\.(weight|bias)", Rule("column", "in_out")),
        (r"backbone\.blocks\.\d+\.output\.projection\.(weight|bias)", Rule("row", "in_out")),
        (r"backbone\.layernorm\.(gamma|beta)", Rule("replicated", place="last")),
    ),
}
def family_of(arch: str) -> str:
    from petrun.models.registry import arch_families
    families = arch_families()
    fam = families.get(arch)
    if fam is None or fam not in FAMILIES:
        raise UserError(f"petrun has no parallel layout for model.arch.type {arch!r}",
                        key="model.arch.type", fix=f"use one of {', '.join(sorted(families))}")
    return fam


def find_rule(family: str, name: str) -> Rule | None:
    for pattern, rule in FAMILIES[family]:
        if pattern.fullmatch(name):
            return rule
    return None


def layer_stage(layer: int, num_layers: int, pp: int, offset=0) -> int:
    """MindFormers' stage of decoder layer `layer` (set_layer_stage_recompute)."""
    if pp <= 1:
        return 0
    if isinstance(offset, (list, tuple)):
        if len(offset) != pp:
            raise UserError(f"offset has {len(offset)} entries but pipeline_stage is {pp}",
                            key="model.model_config.offset",
                            fix="give one offset per stage, or a single integer")
        per_stage = [num_layers // pp + int(o) for o in offset]
        bounds = [sum(per_stage[:i + 1]) for i in range(pp)]
        return min(sum(1 for b in bounds if b < layer + 1), pp - 1)
    per = max(int((num_layers + 1) / pp), 1)
    return min((layer + int(offset or 0)) // per, pp - 1)


def layers_per_stage(num_layers: int, pp: int, offset=0) -> list[int]:
    """How many decoder layers each stage runs under layer_stage (not always ceil(L / pp):
    6 layers on 4 stages run 1, 1, 1, 3)."""
    counts = [0] * max(pp, 1)
    for i in range(num_layers):
        counts[layer_stage(i, num_layers, pp, offset)] += 1
    return counts


def _split_dims(rule: Rule, shape: tuple[int, ...], suffix: str, base_shape=None) -> dict[int, str]:
    """{tensor dim: why} that the mp axis splits, for one parameter under `rule`."""
    out_dim, in_dim = (0, 1) if rule.orient == "out_in" else (1, 0)
    if suffix in LORA_SUFFIXES or suffix == IA3_SUFFIX:
        base = _split_dims(rule, base_shape, "weight")
        if suffix == IA3_SUFFIX:
            # [out, 1] scales the base's outputs, [1, in] (feed-forward) its inputs.
            if shape[0] == 1 and len(shape) == 2 and shape[1] != 1:
                return {1: "in"} if in_dim in base else {}
            return {0: "out"} if out_dim in base else {}
        # A [r, in] follows the base's input split, B [out, r] its output split.
        if suffix.endswith("_a"):
            return {1: "in"} if in_dim in base else {}
        return {0: "out"} if out_dim in base else {}
    if rule.kind in ("replicated", "encoder"):
        return {}
    if suffix == "bias":
        return {0: "out"} if rule.kind == "column" else {}
    if rule.kind in ("column", "vocab"):
        return {out_dim if rule.kind == "column" else 0: "out"}
    return {in_dim: "in"}   # row


@dataclass
class StrategyPlan:
    """Every parameter's layout for one ParallelDims; stages[s] is what stage s's file lists."""
    dims: ParallelDims
    family: str
    layouts: dict[str, Layout]
    full_shapes: dict[str, tuple[int, ...]]
    notes: list[str] = field(default_factory=list)

    def stage(self, s: int) -> dict[str, Layout]:
        return {n: l for n, l in self.layouts.items() if l.stage == s}

    @property
    def stages(self) -> list[dict[str, Layout]]:
        return [self.stage(s) for s in range(self.dims.pp)]


def plan_layouts(params: dict[str, tuple[int, ...]], dims: ParallelDims, family: str, *,
                 num_layers: int | None = None, offset=0, trainable=(), dtype_bytes: dict | None = None
                 ) -> StrategyPlan:
    """Layouts for every parameter (full shapes in `params`, MindFormers names).

    trainable: names the optimizer updates (only those get optimizer sharding);
    dtype_bytes: {name: bytes per element} for the optimizer-shard threshold (default 4).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}")
    dev = (dims.dp, dims.mp)
    if num_layers is None:
        layers = [int(m.group(1)) for m in map(_LAYER.search, params) if m]
        num_layers = max(layers) + 1 if layers else 1
    if dims.pp > num_layers:
        raise UserError(f"pipeline_stage {dims.pp} is more than the model's {num_layers} layers",
                        key="parallel_config.pipeline_stage", fix=f"use at most {num_layers} stages")
    tied = family == "gpt2" or (family == "llama2" and "lm_head.weight" not in params)
    if dims.pp > 1 and tied:
        # The head computes on the last stage with a table stage 0 owns; sharing a parameter
        # across stages cannot be verified here without Ascend, so it is refused, not guessed.
        raise UserError("pipeline stages with a tied embedding/output table are not supported yet "
                        f"({'GPT2 always ties it' if family == 'gpt2' else 'tie_word_embeddings'})",
                        key="parallel_config.pipeline_stage",
                        fix="use pipeline_stage: 1 with model_parallel/data_parallel, or untie the "
                            "head (Llama2: tie_word_embeddings: False)")
    trainable = set(trainable)
    notes: list[str] = []
    unknown, bad = [], []
    layouts: dict[str, Layout] = {}
    for name, shape in params.items():
        shape = tuple(int(d) for d in shape)
        owner, _, suffix = name.rpartition(".")
        rule = param_rule(family, name)
        base_shape = _base_shape(params, owner, name) if suffix in BASE_FOLLOWERS else None
        if rule is None:
            unknown.append(name)
            continue
        split = _split_dims(rule, shape, suffix, base_shape)
        if rule.kind == "vocab" and dims.vocab_emb_dp:
            split = {}
        tensor_map = [-1] * len(shape)
        if dims.mp > 1:
            for d in split:
                if shape[d] % dims.mp:
                    if rule.kind == "vocab":
                        notes.append(f"{name}: vocabulary {shape[d]} is not divisible by "
                                     f"model_parallel {dims.mp}, so it stays whole (as MindFormers does)")
                        continue
                    bad.append(f"{name} dim {d} ({shape[d]})")
                    continue
                tensor_map[d] = MP_AXIS
        m = _LAYER.search(name)
        if rule.place == "first":
            stage = 0
        elif rule.place == "last":
            stage = dims.pp - 1
        else:
            stage = layer_stage(int(m.group(1)), num_layers, dims.pp, offset) if m else 0
        size, step = _opt_shard(name, shape, tensor_map, dims, trainable,
                                (dtype_bytes or {}).get(name, 4), notes)
        layouts[name] = Layout(dev, tuple(tensor_map), size, step, stage)
    if unknown:
        raise ValueError(f"no {family} layout rule for {len(unknown)} parameters, e.g. "
                         + ", ".join(unknown[:4]))
    if bad:
        raise UserError(f"model_parallel {dims.mp} does not divide " + ", ".join(bad[:4])
                        + (f" and {len(bad) - 4} more" if len(bad) > 4 else ""),
                        key="parallel_config.model_parallel",
                        fix="choose a model_parallel that divides the head counts and hidden sizes "
                            "(e.g. n_kv_heads for wk/wv)")
    return StrategyPlan(dims, family, layouts, {n: tuple(s) for n, s in params.items()}, notes)


def param_rule(family: str, name: str) -> Rule | None:
    """The rule of one parameter: its own, or — LoRA matrices, IA3 vectors — its base weight's."""
    owner, _, suffix = name.rpartition(".")
    if suffix in BASE_FOLLOWERS:
        return find_rule(family, f"{owner}.weight")
    if PET_MARK in name:
        # Adapters live in a layer (small, whole); prompt/prefix encoders feed the first stage.
        return Rule("replicated") if _LAYER.search(name) else Rule("encoder", place="first")
    return find_rule(family, name)


def _base_shape(params, owner, name):
    base = params.get(f"{owner}.weight")
    if base is None:
        raise ValueError(f"{name}: no base weight {owner}.weight among the parameters")
    return tuple(base)


def _opt_shard(name, shape, tensor_map, dims: ParallelDims, trainable, itemsize, notes):
    """(size, step) of optimizer sharding, 0/0 when the parameter is not sharded.

    MindSpore shards only parameters the optimizer updates, over the ranks that hold the same
    slice (the repeated grid axes), on dim 0, when the slice is at least the threshold and dim 0
    divides evenly; otherwise it keeps the parameter whole and warns.
    """
    if not dims.optimizer_shard or name not in trainable or not shape:
        return 0, 0
    used = {t for t in tensor_map if t != -1}
    # dev_matrix [dp, mp]: the dp axis is always repeated for weights; mp too if unused.
    repeated = dims.dp * (dims.mp if MP_AXIS not in used else 1)
    step = dims.mp if MP_AXIS in used else 1
    if repeated <= 1:
        return 0, 0
    size = repeated if dims.optimizer_shard_size in (-1, 0) else min(dims.optimizer_shard_size, repeated)
    if repeated % size:
        notes.append(f"{name}: optimizer_weight_shard_size {size} does not divide {repeated}; kept whole")
        return 0, 0
    splits = [1 if t == -1 else dims.mp for t in tensor_map]
    slice_elems = math.prod(d // s for d, s in zip(shape, splits))
    if slice_elems * itemsize < dims.optimizer_threshold_kb * 1024:
        return 0, 0
    if (shape[0] // splits[0]) % size:
        notes.append(f"{name}: dim 0 ({shape[0] // splits[0]} per slice) is not divisible by the "
                     f"optimizer shard size {size}; kept whole")
        return 0, 0
    return size, step


# --------------------------------------------------------------------------- per-op strategies
# A strategy gives, per operand, how many pieces each of its dims is cut into (MindSpore's
# in_strategy). Activations are (batch, seq, features), flattened to (batch·seq, features) inside
# linear layers, or BNSD (batch, heads, seq, head_dim) in attention: batch split by dp, heads and
# the model-parallel features by mp. A weight operand's strategy is read off its Layout.

def _weighted(kind: str, b: int, lay: dict[str, Layout]) -> dict[str, tuple]:
    """Strategies of a cell that computes with parameters; lay: {local name: Layout}."""
    if kind in ("linear", "linear_in_out"):
        w = lay["weight"].splits()
        o, i = w if kind == "linear" else w[::-1]
        out = {"matmul": ((b, i), w)}
        if "bias" in lay:
            out["bias_add"] = ((b, o), (o,))
        return out
    if kind in ("embedding", "positions"):
        table = lay["embedding_weight" if "embedding_weight" in lay else "embedding_table"].splits()
        # token ids are (batch, seq); GPT-2's position ids a plain (seq,) range
        return {"gather": (table, (b, 1) if kind == "embedding" else (1,))}
    if kind == "tied_head":            # hidden @ tableᵀ, the table [vocab, hidden]
        table = lay["table"].splits()
        return {"matmul": ((b, table[1]), table)}
    if kind == "lora":
        a_in = lay["mindpet_delta_lora_a"].splits()[1]
        b_out = lay["mindpet_delta_lora_b"].splits()[0]
        # A's partial sums over a row-parallel input are all-reduced by MindSpore before B.
        return {"lora_dropout.dropout": ((b, 1, a_in),), "lora_a": ((b, a_in), (1, a_in)),
                "lora_scale": ((b, 1), ()), "lora_b": ((b, 1), (b_out, 1)),
                "lora_add": ((b, 1, b_out), (b, 1, b_out))}
    if kind == "ia3":
        split = max(lay[IA3_SUFFIX].splits())       # [out, 1] or [1, in]: one dim is whole
        return {"scale_mul": ((b, 1, split), (split,))}
    raise ValueError(f"unknown cell kind {kind!r}")


def _activations(kind: str, dp: int, mp: int) -> dict[str, tuple]:
    rows, heads, pairs = (dp, 1, 1), (dp, mp, 1, 1), (dp, mp, 1, 1, 1)
    feats = (dp, 1, mp)                # (batch, seq, features) split like a column output
    whole4 = (1, 1, 1, 1)              # cos/sin tables broadcast over batch and heads
    table = {
        "rmsnorm": {"square": (rows,), "mean": (rows,), "add_eps": (rows, ()), "rsqrt": (rows,),
                    "mul": (rows, rows), "mul_weight": (rows, (1,))},
        "layernorm": {"norm": (rows, (1,), (1,))},
        "residual": {"add": (rows, rows)},
        "adapter": {"dropout.dropout": (rows,), "add": (rows, rows)},
        "dropout_rows": {"dropout": (rows,)},
        "dropout_heads": {"dropout": (heads,)},
        "embed_positions": {"add": (rows, (1, 1, 1))},
        "heads": {"split_heads": ((dp, 1, mp, 1),), "merge_heads": (heads,)},
        "attention": {"qk": (heads, heads), "scale": (heads, ()), "mask_fill": (heads,) * 3,
                      "softmax": (heads,), "pv": (heads, heads), "tile_kv": (heads,)},
        "rotary": {"mul_cos": (heads, whole4), "mul_sin": (heads, whole4), "add": (heads, heads),
                   "split": (heads,), "neg": (heads,), "concat": (heads, heads)},
        "glm2_rotary": {"mul_cos": (heads, whole4), "mul_sin": (heads, whole4),
                        "add": (heads, heads), "split_pairs": (pairs,), "neg": (pairs,),
                        "concat_pairs": (pairs, pairs), "concat_rest": (heads, heads)},
        "gated_mlp": {"act": (feats,), "mul": (feats, feats)},
        "mlp": {"act": (feats,)},
        "loss": {"log_softmax": ((dp, 1),)},
    }
    if kind not in table:
        raise ValueError(f"unknown cell kind {kind!r}")
    return table[kind]


WEIGHTED_KINDS = ("linear", "linear_in_out", "embedding", "positions", "tied_head", "lora", "ia3")


def cell_strategies(kind: str, dims: ParallelDims, layouts: dict[str, Layout] | None = None,
                    batched: bool = True) -> dict[str, tuple]:
    """{primitive attribute: in_strategy} for one petrun cell of `kind` (its `shard_kind`).

    layouts: the Layouts of the parameters the cell computes with, by local name ("weight",
    "bias", "mindpet_delta_lora_a", … ; "table" for a tied head). batched False: the cell
    computes on something without a batch axis (PET encoders), so dp does not split it.
    """
    if kind in WEIGHTED_KINDS:
        return _weighted(kind, dims.dp if batched else 1, layouts or {})
    return _activations(kind, dims.dp, dims.mp)
