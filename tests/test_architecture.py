"""The floor plan of ARCHITECTURE.md, checked: no import circles, no import from a layer above,
no business logic in petrun/cli/, no oversized module without a stated reason.

The import graph is read statically with `ast`, every `import` statement anywhere in a file —
including those inside functions, which petrun uses to keep MindSpore out of `petrun --help`: a
lazy import is still a dependency, and a lazy circle still ties two modules into one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "petrun"

# Lowest first. A module may import modules of its own layer or below (its own layer only without
# circles, checked separately). The longest matching prefix decides a module's layer. Keep this
# table and ARCHITECTURE.md's "Layers" section saying the same thing.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("petrun.errors", "petrun.atomic", "petrun.version")),
    # MindSpore-free descriptions: what config validation, the planner and pre-flight read
    # without building anything.
    ("descriptions", ("petrun.models.configs", "petrun.models.dtypes", "petrun.models.registry",
                      "petrun.models.shapes", "petrun.pet.config", "petrun.pet.registry",
                      "petrun.config.mindformers_keys", "petrun.data.tokenizer_keys",
                      "petrun.data.formats")),
    ("config", ("petrun.config",)),
    # Components: each knows its own subject and what is below.
    ("components", ("petrun.models", "petrun.pet", "petrun.data", "petrun.ckpt",
                    "petrun.parallel", "petrun.plan", "petrun.infer", "petrun.store.hf_config")),
    ("build", ("petrun.build",)),
    # Whole jobs and tools that need a built model.
    ("recipes", ("petrun.train", "petrun.infer.recipe", "petrun.infer.chat_recipe",
                 "petrun.ckpt.merge", "petrun.ckpt.peft_format", "petrun.ckpt.export",
                 "petrun.preflight", "petrun.store")),
    ("api", ("petrun.jobs", "petrun.api", "petrun.trainer", "petrun")),
    ("cli", ("petrun.cli", "petrun.__main__")),
]

# Modules over MAX_LINES, each with the reason it stays one file.
MAX_LINES = 500
LONG_MODULES = {
    "petrun/config/schema.py": "every section's typed schema in one table a reader scans top "
                               "to bottom; splitting it scatters the 'did you mean' key lists",
    "petrun/ckpt/peft_format.py": "the whole HF PEFT format, both directions, per method; one "
                                  "place decides PEFT key names",
    "petrun/data/loader.py": "MindRecord/JSONL/raw sources, packing and bucketing behind one "
                             "open_dataset; splitting is tracked for the next data change",
    "petrun/ckpt/transform.py": "MindSpore's transform_checkpoints with each of its silent "
                                "failures checked (the module docstring lists them)",
    "petrun/parallel/launch.py": "msrun's and MindFormers' launcher spellings, mapped or refused "
                                 "flag by flag",
    "petrun/preflight.py": "every pre-flight check, each a short function, in the order a job "
                           "meets them",
    "petrun/ckpt/hf.py": "HF safetensors ↔ MindSpore .ckpt for three families, streaming, with "
                         "the name maps",
}

# What petrun/cli/ must not import: model cells, PET methods, the training and inference
# internals, checkpoint reading/writing — nor MindSpore or numpy, without which no tensor work is
# possible. The CLI parses, calls one library entry (petrun.jobs.run_job, a tool's function such
# as petrun.build.plan_for_config or petrun.ckpt.merge.merge), and prints what it returns.
CLI_FORBIDDEN = ("petrun.models.llama", "petrun.models.glm2", "petrun.models.gpt2",
                 "petrun.models.layers", "petrun.pet.", "petrun.train.recipe",
                 "petrun.train.step", "petrun.train.optim", "petrun.train.lr",
                 "petrun.train.resume", "petrun.train.callbacks", "petrun.infer.generate",
                 "petrun.infer.kv_cache",
                 "petrun.infer.sampling", "petrun.infer.eval", "petrun.infer.chat_session",
                 "petrun.infer.chat_recipe", "petrun.ckpt.load",
                 "petrun.ckpt.io", "petrun.ckpt.store")
CLI_FORBIDDEN_THIRD_PARTY = ("mindspore", "numpy")


def _modules() -> dict[str, tuple[Path, str]]:
    """module name -> (file, package the file's relative imports are relative to)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            out[".".join(parts)] = (path, ".".join(parts))
        else:
            out[".".join(parts)] = (path, ".".join(parts[:-1]))
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The petrun module `name` lives in (a name may be a module, or an attribute of one)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(petrun modules, top-level third-party names) that `module` imports anywhere in its file."""
    path, package = MODULES[module]
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                full = ".".join(base + ([node.module] if node.module else []))
            else:
                full = node.module or ""
            # `from pkg import sub` imports the submodule; `from mod import name` the module.
            names = [f"{full}.{a.name}" if f"{full}.{a.name}" in MODULES else full
                     for a in node.names]
        else:
            continue
        for name in names:
            if name == "petrun" or name.startswith("petrun."):
                target = _resolve(name)
                if target and target != module:
                    ours.add(target)
            else:
                theirs.add(name.split(".")[0])
    return ours, theirs


GRAPH = {m: imports_of(m)[0] for m in MODULES}


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and ARCHITECTURE.md"
    return best


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_walker_sees_lazy_imports():
    # The checks below are only as good as the walker: a function-level import must count.
    assert "petrun.models.registry" in GRAPH["petrun.build"]   # imported inside build_model
    assert "petrun.ckpt.transform" in GRAPH["petrun.build"]    # inside auto_trans_files


def test_no_import_circles():
    assert _cycles() == [], "import circles (lazy imports included)"


def test_no_import_from_a_layer_above():
    names = [n for n, _ in LAYERS]
    bad = [f"{m} ({names[layer_of(m)]}) imports {t} ({names[layer_of(t)]})"
           for m, targets in sorted(GRAPH.items()) for t in sorted(targets)
           if layer_of(t) > layer_of(m)]
    assert bad == []


def test_nothing_inside_petrun_imports_the_api_facade():
    users = sorted(m for m, t in GRAPH.items() if "petrun.api" in t and m != "petrun")
    assert users == [], "library code calls petrun.build; petrun.api is for users"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("petrun.cli")))
def test_cli_parses_calls_prints(module):
    ours, theirs = imports_of(module)
    assert not [t for t in ours if t.startswith(CLI_FORBIDDEN) or t in
                tuple(p.rstrip(".") for p in CLI_FORBIDDEN)], \
        f"{module} reaches into training/inference/checkpoint internals"
    assert not theirs & set(CLI_FORBIDDEN_THIRD_PARTY), f"{module} computes instead of calling"


def test_long_modules_have_a_reason():
    long = {str(p.relative_to(ROOT.parent)): len(p.read_text().splitlines())
            for p in ROOT.rglob("*.py")}
    unlisted = {p: n for p, n in long.items() if n > MAX_LINES and p not in LONG_MODULES}
    assert unlisted == {}, f"over {MAX_LINES} lines: split them or list them with a reason"
    stale = [p for p in LONG_MODULES if long.get(p, 0) <= MAX_LINES]
    assert stale == [], "listed as long but no longer are: drop them from LONG_MODULES"
