"""What every PET method shares: finding target layers, renaming, freezing, the parameter report.

Targeting follows MindFormers exactly (reference/mindformers.md §5.3) so its YAMLs keep their
meaning: the walk starts at the model's base submodule, and `target_modules` is `re.match`-ed
against each child's LOCAL attribute name (`wq`), never its dotted path. petrun is stricter in one
way: a pattern, or any one of its top-level `|` alternatives, that adapts no layer is an error
instead of a silent no-op.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Iterable

from petrun.errors import UserError

KEY_PREFIX = "model.model_config.pet_config"
TARGET_KEY = f"{KEY_PREFIX}.target_modules"
EXCLUDE_KEY = f"{KEY_PREFIX}.exclude_layers"

# MindFormers' LoraModel adapts the first of these attributes it finds (Llama: `model`, so the
# untied lm_head is never a target).
BASE_ATTRS = ("network", "backbone", "model", "transformer", "llm_model", "language_model")

_GLOBAL_FLAGS = re.compile(r"^\(\?[aiLmsux]+\)")


def linear_types() -> tuple[type, ...]:
    """The layer classes a pattern may target: nn.Dense and every petrun DenseBase, whichever way
    it stores its weight (Linear [out, in]; GPT-2's LinearInOut [in, out], as MindFormers adapts
    its transpose_b=False Linear layers). A method that folds into the weight reads the layout
    from the layer's `weight_in_out`."""
    from mindspore import nn

    from petrun.models.layers import DenseBase

    return (DenseBase, nn.Dense)


def weight_is_in_out(layer) -> bool:
    """DenseBase layers declare their layout (GPT-2's LinearInOut: [in, out]); nn.Dense stores
    [out, in]."""
    return bool(getattr(layer, "weight_in_out", False))


def base_submodule(net) -> tuple[str, object]:
    """(attribute name, cell) the adapters go into; ("", net) if it has none of BASE_ATTRS."""
    from mindspore import nn

    for name in BASE_ATTRS:
        cell = getattr(net, name, None)
        if isinstance(cell, nn.Cell):
            return name, cell
    return "", net


# ---------------------------------------------------------------------------------------------
# Target matching


@dataclass
class Target:
    path: str      # full dotted path from the top-level net, e.g. "model.layers.0.attention.wq"
    parent: object
    name: str      # local attribute name in `parent`, e.g. "wq"
    cell: object


@dataclass
class MatchResult:
    pattern: str
    alternatives: list[str]
    targets: list[Target]
    hits: dict[str, int]                       # alternative -> layers it adapts
    # Matching children that are not linear: MindFormers skips them AND their subtree.
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, class name)
    linear_names: dict[str, int] = field(default_factory=dict)     # local name -> count
    base: str = ""

    @property
    def dead(self) -> list[str]:
        return [alt for alt, n in self.hits.items() if n == 0]


def split_alternatives(pattern: str) -> list[str]:
    """Top-level `|` alternatives of a regex; `|` inside (...), [...] or escaped does not split.

    For `re.match`, matching `A|B` is exactly "A matches or B matches", so each alternative can be
    checked on its own. A leading global flag group such as `(?i)` applies to every alternative.
    """
    parts, buf, depth, i, n = [], [], 0, 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            buf.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "[":
            # Copy the whole class; a `]` right after `[` or `[^` is a literal, not the end.
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            buf.append(pattern[i:j + 1])
            i = j + 1
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth = max(depth - 1, 0)
        elif c == "|" and depth == 0:
            parts.append("".join(buf))
            buf = []
            i += 1
            continue
        buf.append(c)
        i += 1
    parts.append("".join(buf))
    flags = _GLOBAL_FLAGS.match(parts[0])
    if flags and len(parts) > 1:
        parts = [parts[0]] + [flags.group(0) + p for p in parts[1:]]
    return parts


def _compile(pattern: str, key: str):
    try:
        return re.compile(pattern)
    except re.error as e:
        raise UserError(f"{pattern!r} is not a valid regular expression ({e})", key=key,
                        fix="write a Python regex such as '.*wq|.*wv'") from None


def _exclude_list(exclude_layers) -> list[str]:
    if exclude_layers is None or exclude_layers == "None":
        return []
    if isinstance(exclude_layers, str):
        return [exclude_layers]
    if not isinstance(exclude_layers, (list, tuple)) or not all(
            isinstance(x, str) for x in exclude_layers):
        raise UserError(f"must be a list of regex strings, got {exclude_layers!r}", key=EXCLUDE_KEY,
                        fix="e.g. exclude_layers: ['.*wo']")
    return list(exclude_layers)


def match_targets(net, pattern: str, exclude_layers=None, *, types=None) -> MatchResult:
    """Walk the base submodule the MindFormers way and attribute every target to the
    alternatives that match it. Never raises for a pattern that matches nothing (see find_targets).
    """
    if not isinstance(pattern, str) or not pattern:
        raise UserError(f"must be a regex string, got {pattern!r}", key=TARGET_KEY,
                        fix="e.g. target_modules: '.*wq|.*wv'")
    whole = _compile(pattern, TARGET_KEY)
    excludes = [_compile(p, EXCLUDE_KEY) for p in _exclude_list(exclude_layers)]
    alternatives = split_alternatives(pattern)
    try:
        alt_res = [re.compile(a) for a in alternatives]
    except re.error:  # e.g. a back-reference into another alternative: check the whole only
        alternatives, alt_res = [pattern], [whole]
    types = types or linear_types()
    base_name, base = base_submodule(net)
    result = MatchResult(pattern, alternatives, [], {a: 0 for a in alternatives}, base=base_name)

    def walk(cell, prefix):
        for name, child in cell._cells.items():  # pylint: disable=protected-access
            if child is None or any(ex.match(name) for ex in excludes):
                continue
            path = f"{prefix}.{name}" if prefix else name
            if whole.match(name):
                if isinstance(child, types):
                    result.targets.append(Target(path, cell, name, child))
                    for alt, rx in zip(alternatives, alt_res):
                        if rx.match(name):
                            result.hits[alt] += 1
                else:
                    result.skipped.append((path, type(child).__name__))
                continue
            walk(child, path)

    walk(base, base_name)
    for path, _ in _linear_layers(net, types):
        local = path.rsplit(".", 1)[-1]
        result.linear_names[local] = result.linear_names.get(local, 0) + 1
    return result


def alternative_hits(net, pattern: str, exclude_layers=None) -> dict[str, int]:
    """{alternative: number of layers it adapts} — for the pre-flight check."""
    return match_targets(net, pattern, exclude_layers).hits


def find_targets(net, pattern: str, exclude_layers=None, *, types=None) -> list[Target]:
    """The layers `pattern` adapts; a UserError if the pattern or any alternative adapts none."""
    result = match_targets(net, pattern, exclude_layers, types=types)
    if result.targets and not result.dead:
        return result.targets
    linear_paths = [p for p, _ in _linear_layers(net, types)]
    message, fix = _explain(result, exclude_layers, type(net).__name__, linear_paths)
    raise UserError(message, key=TARGET_KEY, fix=fix)


def _linear_layers(net, types=None) -> list[tuple[str, object]]:
    """(dotted path, cell) of every linear layer under the base submodule, pattern or not."""
    types = types or linear_types()
    base_name, base = base_submodule(net)
    return [(".".join(x for x in (base_name, p) if x), c)
            for p, c in base.cells_and_names() if isinstance(c, types)]


def _core(alt: str) -> str:
    """The literal text in an alternative ('.*query_key_value*' → 'query_key_value')."""
    return re.sub(r"\\.|[.*+?^$()\[\]{}|]", "", alt)


def _explain(result: MatchResult, exclude_layers, net_name: str,
             linear_paths: list[str]) -> tuple[str, str]:
    """(message, fix) for a pattern with dead alternatives: why each one adapts nothing."""
    where = f"{net_name}.{result.base}" if result.base else net_name
    names = list(result.linear_names)
    listing = ", ".join(f"{n} (x{c})" if c > 1 else n
                        for n, c in list(result.linear_names.items())[:12])
    alive = [a for a, n in result.hits.items() if n]
    if not result.targets:
        head = f"target_modules '{result.pattern}' matches no linear layer in {where}."
    else:
        hits = ", ".join(f"'{a}' ({result.hits[a]} layers)" for a in alive)
        dead = ", ".join(f"'{a}'" for a in result.dead)
        head = (f"target_modules '{result.pattern}': alternative(s) {dead} match no linear layer "
                f"in {where} (matched: {hits}). A misspelt alternative is never ignored silently.")
    lines = [head, "Patterns are re.match-ed against each layer's own attribute name "
                   "(e.g. 'wq'), not its dotted path (MindFormers semantics).",
             f"Linear layers that exist: {listing or 'none'}."]
    fixes = []
    local = lambda path: path.rsplit(".", 1)[-1]  # noqa: E731
    for alt in result.dead:
        rx = re.compile(alt)
        reachable = [p for p in linear_paths if rx.match(local(p))]
        blocking = [(p, t) for p, t in result.skipped if rx.match(local(p))]
        if reachable:  # it names real layers, but the walk never gets to them
            p0 = reachable[0]
            blocker = next((f"'{sp}' ({st})" for sp, st in result.skipped
                            if p0.startswith(sp + ".")), None)
            if blocker:
                lines.append(f"'{alt}' names '{p0}', but the walk never reaches it: {blocker} "
                             "matches the pattern and is not a linear layer, so nothing inside "
                             "it is searched.")
                fixes.append(f"make no alternative match {blocker.split()[0]} "
                             "(e.g. end names with '$')")
            else:
                lines.append(f"'{alt}' names only layers that exclude_layers {exclude_layers!r} "
                             "removes.")
                fixes.append("drop it or narrow exclude_layers")
            continue
        if blocking:
            path, typ = blocking[0]
            lines.append(f"'{alt}' matches '{path}' ({typ}), which is not a linear layer; "
                         "matching stops there and the layers inside it are not searched.")
        elif r"\." in alt or any(rx.match(p) for p in linear_paths):
            lines.append(f"'{alt}' looks like a dotted path; only the last name is tested.")
        elif any(rx.search(n) for n in names):
            lines.append(f"'{alt}' occurs inside a name but re.match anchors at its start.")
        # Suggest the layers a dotted/container pattern meant, else the closest local name.
        meant = sorted({local(p) for p in linear_paths if rx.match(p) or rx.search(local(p))})
        meant = meant or difflib.get_close_matches(_core(alt), names, n=1, cutoff=0.5)
        if meant:
            fixes.append(f"replace '{alt}' with '{'|'.join('.*' + m for m in meant)}'")
    if fixes:
        fix = "; ".join(fixes)
    elif alive:
        fix = f"drop the dead alternative(s): target_modules: '{'|'.join(alive)}'"
    elif names:
        example = "|".join(".*" + n for n in names[:4])
        fix = f"use local layer names, e.g. target_modules: '{example}'"
    else:
        fix = "this model has no linear layers that PET can target"
    return "\n".join(lines), fix


# ---------------------------------------------------------------------------------------------
# Injection and naming


def replace_child(parent, name: str, new) -> None:
    """Put `new` where `parent.<name>` was. Sequential containers keep a list beside `_cells`
    that a plain setattr would leave stale, so they are indexed instead."""
    from mindspore import nn

    if isinstance(parent, (nn.SequentialCell, nn.CellList)) and name.isdigit():
        parent[int(name)] = new
    else:
        setattr(parent, name, new)


def refresh_parameter_names(net) -> None:
    """Set every Parameter's name to its full dotted path in `net`.

    MindSpore prefixes names when a child is assigned, but only with the LOCAL attribute name
    once the parents exist (`wq.weight`), so after injection the checkpoint names are wrong
    until this runs. A Parameter reachable by two paths gets the first one, where the cell's own
    parameters come before its children's (LoRA relies on this to keep `wq.weight`).
    """
    for path, param in net.parameters_and_names():
        if param.name != path:
            param.name = path


# ---------------------------------------------------------------------------------------------
# Freezing and the report


def freeze_globs(pet_config) -> tuple[list[str], list[str]]:
    """(freeze_include, freeze_exclude) as lists of globs; call before touching the net."""
    out = []
    for key in ("freeze_include", "freeze_exclude"):
        value = getattr(pet_config, key, None)
        if value is None or value == "None":
            value = []
        elif isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
            raise UserError(f"must be a list of glob strings, got {value!r}",
                            key=f"{KEY_PREFIX}.{key}", fix="e.g. ['*lm_head*']")
        out.append(list(value))
    return out[0], out[1]


def freeze(net, pet_type: str, freeze_include=(), freeze_exclude=()) -> None:
    """MindFormers' freeze_delta (§5.2): only `*mindpet_delta_<pet_type>*` stays trainable; then
    freeze_include globs freeze and freeze_exclude globs unfreeze, over full parameter names.
    A name matched by both lists keeps its state. A glob that matches no parameter is an error.
    """
    include, exclude = list(freeze_include or ()), list(freeze_exclude or ())
    params = list(net.get_parameters())
    names = [p.name for p in params]
    for key, globs in (("freeze_include", include), ("freeze_exclude", exclude)):
        for g in globs:
            if not any(fnmatch.fnmatchcase(n, g) for n in names):
                raise UserError(f"glob {g!r} matches no parameter", key=f"{KEY_PREFIX}.{key}",
                                fix=f"globs match full names such as {names[0]!r}; "
                                    "use '*' on both sides, e.g. '*norm*'")
    delta = f"*mindpet_delta_{pet_type}*"
    for p in params:
        p.requires_grad = fnmatch.fnmatchcase(p.name, delta)
        inc = any(fnmatch.fnmatchcase(p.name, g) for g in include)
        exc = any(fnmatch.fnmatchcase(p.name, g) for g in exclude)
        if inc and not exc:
            p.requires_grad = False
        elif exc and not inc:
            p.requires_grad = True
    if not any(p.requires_grad for p in params):
        raise UserError("no trainable parameter is left after freezing",
                        key=f"{KEY_PREFIX}.freeze_include",
                        fix=f"do not freeze the {pet_type} parameters ('{delta}')")


def count_parameters(net) -> tuple[int, int]:
    """(trainable, all) element counts; a shared Parameter is counted once."""
    trainable = total = 0
    for p in net.get_parameters():
        n = int(p.size)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def trainable_line(trainable: int, total: int) -> str:
    """HF PEFT's print_trainable_parameters line, so users can compare numbers directly."""
    pct = 100 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {pct:.4f}"


@dataclass
class PetReport:
    pet_type: str
    trainable: int
    total: int
    targets: list[str] = field(default_factory=list)   # dotted paths of adapted layers
    # The network to train: the base net itself for methods that inject layers in place, a
    # wrapper around it for prompt-learning methods (petrun.pet.virtual.PromptLearningModel).
    model: object = field(default=None, repr=False, compare=False)

    @property
    def line(self) -> str:
        return trainable_line(self.trainable, self.total)

    def __str__(self) -> str:
        return self.line


def make_report(net, pet_type: str, targets: Iterable[str] = ()) -> PetReport:
    trainable, total = count_parameters(net)
    return PetReport(pet_type, trainable, total, list(targets), model=net)


def delta_names(net, pet_type: str) -> list[str]:
    """Names of the parameters a method added (`*mindpet_delta_<pet_type>*`), in model order."""
    delta = f"*mindpet_delta_{pet_type}*"
    return [p.name for p in net.get_parameters() if fnmatch.fnmatchcase(p.name, delta)]


def check_fresh(net, pet_type: str) -> None:
    """A UserError if any PET method was already applied to `net` (methods do not stack)."""
    applied = [p.name for p in net.get_parameters() if "mindpet_delta_" in p.name]
    wrapped = getattr(net, "pet_model", None) is not None or getattr(net, "pet_wrapped", False)
    if applied or wrapped:
        raise UserError(f"a PET method is already applied to this model (e.g. "
                        f"{applied[0] if applied else 'a prompt encoder'}); {pet_type} cannot be "
                        "added on top", key=KEY_PREFIX,
                        fix="build the base model afresh before applying a pet_config")
