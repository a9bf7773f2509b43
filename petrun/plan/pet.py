"""What a pet_config adds to a model and what stays trainable, from parameter names alone.

The real injection (petrun/pet) walks built MindSpore cells. Here the same walk runs over the cell
tree implied by the dotted parameter names of petrun.models.shapes, with the same rules
(pet/base.py, MindFormers semantics): start at the base submodule, `re.match` target_modules on each
child's local name, a matching linear layer is a target, a matching non-linear cell ends that
branch, exclude_layers removes a child and its subtree. Cells without parameters (dropout, rotary
tables) are absent from the tree; they can never hold a target, so the hits are the same.

Each built method has a shape function in PET_SHAPES (what it adds, named as petrun.pet names it);
tests/plan/test_pet_shapes.py compares every one with the real apply on tiny models and fails when
a method in petrun.pet.METHODS has none. Prompt-learning methods also report how many virtual
tokens or key/value slots they add, which lengthen the activations.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from petrun.errors import UserError
from petrun.models.shapes import Dims, ParamSpec, device_dtype
from petrun.pet import base as pet_base
from petrun.pet.config import PetConfigBase, RegistryView, resolve


@dataclass
class _Tree:
    children: dict[str, dict[str, None]] = field(default_factory=dict)  # path -> child names
    linear: set[str] = field(default_factory=set)                       # paths of linear layers


# Layers every layer method may adapt (pet_base.linear_types): petrun Linear / nn.Dense ("linear")
# and GPT2's in×out projections ("matmul").
ANY_MATMUL = ("linear", "matmul")


def _tree(specs: dict[str, ParamSpec], kinds=ANY_MATMUL) -> _Tree:
    tree = _Tree()
    for name, spec in specs.items():
        parts = name.split(".")
        parent = ""
        for child in parts[:-1]:
            tree.children.setdefault(parent, {})[child] = None   # dict: ordered, unique
            parent = f"{parent}.{child}" if parent else child
        if spec.kind in kinds and parts[-1] == "weight":
            tree.linear.add(parent)
    return tree


def base_path(specs: dict[str, ParamSpec]) -> str:
    """The submodule PET walks: the first of MindFormers' base attribute names that exists."""
    tops = {n.split(".", 1)[0] for n in specs}
    return next((b for b in pet_base.BASE_ATTRS if b in tops), "")


def match_names(specs: dict[str, ParamSpec], pattern, exclude_layers=None,
                kinds=ANY_MATMUL) -> pet_base.MatchResult:
    """pet_base.match_targets, over names: the same MatchResult (targets carry no cells)."""
    if not isinstance(pattern, str) or not pattern:
        raise UserError(f"must be a regex string, got {pattern!r}", key=pet_base.TARGET_KEY,
                        fix="e.g. target_modules: '.*wq|.*wv'")
    whole = pet_base._compile(pattern, pet_base.TARGET_KEY)  # pylint: disable=protected-access
    excludes = [pet_base._compile(p, pet_base.EXCLUDE_KEY)  # pylint: disable=protected-access
                for p in pet_base._exclude_list(exclude_layers)]  # pylint: disable=protected-access
    alternatives = pet_base.split_alternatives(pattern)
    try:
        alt_res = [re.compile(a) for a in alternatives]
    except re.error:
        alternatives, alt_res = [pattern], [whole]
    tree = _tree(specs, kinds)
    base = base_path(specs)
    result = pet_base.MatchResult(pattern, alternatives, [], {a: 0 for a in alternatives}, base=base)

    def walk(path: str) -> None:
        for name in tree.children.get(path, []):
            if any(ex.match(name) for ex in excludes):
                continue
            child = f"{path}.{name}" if path else name
            if whole.match(name):
                if child in tree.linear:
                    result.targets.append(pet_base.Target(child, None, name, None))
                    for alt, rx in zip(alternatives, alt_res):
                        if rx.match(name):
                            result.hits[alt] += 1
                else:
                    result.skipped.append((child, "cell"))
                continue
            walk(child)

    walk(base)
    for path in linear_paths(specs, kinds):
        local = path.rsplit(".", 1)[-1]
        result.linear_names[local] = result.linear_names.get(local, 0) + 1
    return result


def linear_paths(specs: dict[str, ParamSpec], kinds=ANY_MATMUL) -> list[str]:
    """Dotted paths of the linear layers under the base submodule, in model order."""
    base = base_path(specs)
    paths = [n[:-len(".weight")] for n, s in specs.items()
             if s.kind in kinds and n.endswith(".weight")]
    return [p for p in paths if not base or p.startswith(base + ".")]


def check_targets(specs: dict[str, ParamSpec], pattern, exclude_layers, arch: str,
                  kinds=ANY_MATMUL) -> pet_base.MatchResult:
    """The match, or the same UserError pet_base.find_targets raises on a built model."""
    result = match_names(specs, pattern, exclude_layers, kinds)
    if result.targets and not result.dead:
        return result
    message, fix = pet_base._explain(result, exclude_layers, arch,  # pylint: disable=protected-access
                                     linear_paths(specs, kinds))
    raise UserError(message, key=pet_base.TARGET_KEY, fix=fix)


@dataclass
class PetShapes:
    pet_type: str | None
    params: dict[str, ParamSpec]        # every parameter of the model after the transform
    trainable: list[str]                # names that get gradients and optimizer state
    targets: list[str] = field(default_factory=list)
    virtual_tokens: int = 0             # prompt methods: tokens put in front of every sequence
    prefix_tokens: int = 0              # prefix methods: key/value slots added to every layer
    exact: bool = True                  # names and shapes verified against the real method

    @property
    def trainable_count(self) -> int:
        return sum(self.params[n].size for n in self.trainable)

    @property
    def total_count(self) -> int:
        return sum(s.size for s in self.params.values())


def _freeze(params: dict[str, ParamSpec], pet_type: str, cfg: PetConfigBase) -> list[str]:
    """pet_base.freeze on names: only *mindpet_delta_<type>* trains, then include/exclude globs."""
    include, exclude = pet_base.freeze_globs(cfg)
    names = list(params)
    for key, globs in (("freeze_include", include), ("freeze_exclude", exclude)):
        for g in globs:
            if not any(fnmatch.fnmatchcase(n, g) for n in names):
                raise UserError(f"glob {g!r} matches no parameter",
                                key=f"{pet_base.KEY_PREFIX}.{key}",
                                fix=f"globs match full names such as {names[0]!r}; "
                                    "use '*' on both sides, e.g. '*norm*'")
    delta = f"*mindpet_delta_{pet_type}*"
    trainable = []
    for n in names:
        train = fnmatch.fnmatchcase(n, delta)
        inc = any(fnmatch.fnmatchcase(n, g) for g in include)
        exc = any(fnmatch.fnmatchcase(n, g) for g in exclude)
        if inc and not exc:
            train = False
        elif exc and not inc:
            train = True
        if train:
            trainable.append(n)
    return trainable


def _in_out(spec: ParamSpec) -> tuple[int, int]:
    """(in, out) of a layer weight: Linear stores [out, in], GPT2's in×out layers [in, out]."""
    return (spec.shape[1], spec.shape[0]) if spec.kind == "linear" else tuple(spec.shape)


def _param_dtype(specs: dict[str, ParamSpec]) -> str:
    """The base model's parameter dtype (what prompt-learning encoders are built in)."""
    return next(s.dtype for s in specs.values() if s.matmul)


# Each method: (specs, config, dims, arch, device) -> (added parameters, targets, extra fields).
def _lora(specs, cfg, dims, arch, device):
    """petrun/pet/lora.py: A [r, in] and B [out, r] on each target, whichever way it stores its
    weight."""
    match = check_targets(specs, cfg.target_modules, cfg.exclude_layers, arch, ANY_MATMUL)
    added, r = {}, int(cfg.lora_rank)
    for t in match.targets:
        weight = specs[f"{t.path}.weight"]
        n_in, n_out = _in_out(weight)
        dtype = device_dtype(cfg.param_init_type, device, default=weight.dtype)
        added[f"{t.path}.mindpet_delta_lora_a"] = ParamSpec((r, n_in), dtype, "lora")
        added[f"{t.path}.mindpet_delta_lora_b"] = ParamSpec((n_out, r), dtype, "lora")
    return added, [t.path for t in match.targets], {}


def _ia3(specs, cfg, dims, arch, device):
    """petrun/pet/ia3.py: a vector per target, [out, 1], or [1, in] for feed-forward targets."""
    match = check_targets(specs, cfg.target_modules, cfg.exclude_layers, arch, ANY_MATMUL)
    ff = set()
    if cfg.feedforward_modules:
        for alt in pet_base.split_alternatives(cfg.feedforward_modules):
            rx = re.compile(alt)
            hits = [t.path for t in match.targets if rx.match(t.name)]
            if not hits:
                raise UserError(f"feedforward_modules alternative {alt!r} matches none of the IA3 "
                                f"targets ({', '.join(sorted({t.name for t in match.targets}))})",
                                key=f"{pet_base.KEY_PREFIX}.feedforward_modules",
                                fix="feed-forward modules must be a subset of target_modules")
            ff.update(hits)
    added = {}
    for t in match.targets:
        weight = specs[f"{t.path}.weight"]
        n_in, n_out = _in_out(weight)
        shape = (1, n_in) if t.path in ff else (n_out, 1)
        added[f"{t.path}.mindpet_delta_ia3_l"] = ParamSpec(shape, weight.dtype, "lora")
    return added, [t.path for t in match.targets], {}


def _adapter(specs, cfg, dims, arch, device):
    """petrun/pet/adapter.py: down [b, out] + bias, up [out, b] + bias on each target's output."""
    match = check_targets(specs, cfg.target_modules, cfg.exclude_layers, arch, ANY_MATMUL)
    added, b = {}, int(cfg.bottleneck_size)
    for t in match.targets:
        weight = specs[f"{t.path}.weight"]
        _, n_out = _in_out(weight)
        p = f"{t.path}.mindpet_delta_adapter"
        added[f"{p}_down.weight"] = ParamSpec((b, n_out), weight.dtype, "lora")
        added[f"{p}_down.bias"] = ParamSpec((b,), weight.dtype, "bias")
        added[f"{p}_up.weight"] = ParamSpec((n_out, b), weight.dtype, "lora")
        added[f"{p}_up.bias"] = ParamSpec((n_out,), weight.dtype, "bias")
    return added, [t.path for t in match.targets], {}


def _prefix(name, tokens, mlp, specs, dims, arch):
    """petrun/pet/ptuning2.py's PrefixEncoder: a [P, 2·L·n_kv·head_dim] table (→ tanh MLP)."""
    width = 2 * dims.num_layers * dims.kv_heads * dims.head_dim
    dtype = _param_dtype(specs)
    # ChatGLM2's encoder sits under `prefix_encoder.`, as in MindFormers' ChatGLM2WithPtuning2.
    glm2 = arch.startswith("ChatGLM2")
    p = ("prefix_encoder." if glm2 else "") + f"mindpet_delta_{name}"
    added = {f"{p}_embedding.embedding_table": ParamSpec((tokens, width), dtype, "embedding")}
    if mlp:   # MLP names: petrun/pet/virtual.py ADOPTED_MLP
        first, second = ("dense_in", "dense_out") if glm2 else ("trans.0", "trans.2")
        added[f"{p}_{first}.weight"] = ParamSpec((mlp, width), dtype, "encoder")
        added[f"{p}_{first}.bias"] = ParamSpec((mlp,), dtype, "bias")
        added[f"{p}_{second}.weight"] = ParamSpec((width, mlp), dtype, "encoder")
        added[f"{p}_{second}.bias"] = ParamSpec((width,), dtype, "bias")
    return added, [], {"prefix_tokens": tokens}


def _ptuning2(specs, cfg, dims, arch, device):
    return _prefix("ptuning2", int(cfg.pre_seq_len),
                   int(cfg.projection_dim) if cfg.prefix_projection else 0, specs, dims, arch)


def _prefixtuning(specs, cfg, dims, arch, device):
    return _prefix("prefixtuning", int(cfg.prefix_token_num), int(cfg.mid_dim), specs, dims, arch)


def _check_positions(dims, tokens: int) -> None:
    """petrun/pet/virtual.py: virtual tokens take positions 0..P-1; rotary tables grow, a learned
    position table (GPT-2) cannot."""
    if dims.learned_positions and dims.seq_length + tokens > dims.learned_positions:
        key = f"{pet_base.KEY_PREFIX}.num_virtual_tokens"
        raise UserError(f"{tokens} virtual tokens + seq_length {dims.seq_length} exceed GPT-2's "
                        f"{dims.learned_positions} learned positions", key=key,
                        fix="lower num_virtual_tokens or model.model_config.seq_length so that "
                            "their sum fits max_position_embeddings")


def _prompt_tuning(specs, cfg, dims, arch, device):
    """petrun/pet/prompt.py: [num_virtual_tokens, hidden] virtual-token embeddings."""
    p = int(cfg.num_virtual_tokens)
    _check_positions(dims, p)
    added = {"mindpet_delta_prompt_tuning_embedding.embedding_table":
             ParamSpec((p, dims.hidden), _param_dtype(specs), "embedding")}
    return added, [], {"virtual_tokens": p}


def _ptuning(specs, cfg, dims, arch, device):
    """petrun/pet/ptuning.py: the table through an MLP, or a bidirectional LSTM and an MLP."""
    p, h, e = int(cfg.num_virtual_tokens), dims.hidden, int(cfg.encoder_hidden_size)
    _check_positions(dims, p)
    dtype = _param_dtype(specs)
    added = {"mindpet_delta_ptuning_embedding.embedding_table": ParamSpec((p, h), dtype, "embedding")}
    mlp = "mindpet_delta_ptuning_mlp"
    if cfg.encoder_reparameterization_type == "MLP":
        layers = [(h, e), (e, e), (e, h)]
        indices = (0, 2, 4)
    else:
        # nn.LSTM keeps its parameters in fp32 (ptuning.py); gates i, f, g, o stacked.
        for layer in range(int(cfg.encoder_num_layers)):
            n_in = h if layer == 0 else 2 * e
            for suffix in ("", "_reverse"):
                lstm = "mindpet_delta_ptuning_lstm"
                added[f"{lstm}.weight_ih_l{layer}{suffix}"] = ParamSpec((4 * e, n_in), "float32", "encoder")
                added[f"{lstm}.weight_hh_l{layer}{suffix}"] = ParamSpec((4 * e, e), "float32", "encoder")
                added[f"{lstm}.bias_ih_l{layer}{suffix}"] = ParamSpec((4 * e,), "float32", "bias")
                added[f"{lstm}.bias_hh_l{layer}{suffix}"] = ParamSpec((4 * e,), "float32", "bias")
        layers = [(2 * e, 2 * e), (2 * e, h)]
        indices = (0, 2)
    for i, (n_in, n_out) in zip(indices, layers):
        added[f"{mlp}.{i}.weight"] = ParamSpec((n_out, n_in), dtype, "encoder")
        added[f"{mlp}.{i}.bias"] = ParamSpec((n_out,), dtype, "bias")
    return added, [], {"virtual_tokens": p}


# pet_type -> shape function, as each method's registry entry names it (petrun/pet/config.py).
# tests/plan/test_pet_shapes.py checks each against petrun.pet's real apply and that every
# registered method has one.
PET_SHAPES = RegistryView(lambda m: resolve(m.shapes), only=lambda m: m.shapes is not None)


def apply_pet_shapes(specs: dict[str, ParamSpec], pet_config: PetConfigBase | None, dims: Dims,
                     arch: str, device_target: str = "CPU") -> PetShapes:
    """The model's parameters after `pet_config` (None = full finetune: everything trains).

    A pet_type the planner has no shapes for keeps the base model and trains nothing here; the
    result says so (exact False) so the checkpoint check leaves the adapter names alone."""
    if pet_config is None:
        return PetShapes(None, dict(specs), list(specs))
    fn = PET_SHAPES.get(pet_config.pet_type)
    if fn is None:
        return PetShapes(pet_config.pet_type, dict(specs), [], exact=False)
    added, targets, extra = fn(specs, pet_config, dims, arch, device_target)
    params = {**specs, **added}
    trainable = _freeze(params, pet_config.pet_type, pet_config)
    return PetShapes(pet_config.pet_type, params, trainable, targets, **extra)
