"""A graph compile cache that survives runs, keyed so a changed config never reuses a stale graph.

MindSpore's own cache (MS_COMPILER_CACHE_ENABLE / MS_COMPILER_CACHE_PATH) checks only the Python
source of the network: it does not notice changed parameter shapes (an lr schedule of another
length), changed constants (lora_alpha, eps, rope tables) or other input shapes, and then loads
a graph that does not fit. So petrun gives every distinct training graph a folder of its own,
named by a digest of everything the compiled graph depends on:

- MindSpore's and petrun's versions and the content of the graph code (petrun/models, pet,
  train/step.py, train/optim.py and the file of every cell class in the step cell);
- the context (mode, jit_config) and the input signature (shapes and dtypes of the batch);
- every Parameter of the step cell (network, optimizer state, learning-rate table, loss scale)
  by name, shape, dtype and requires_grad — their values are graph inputs, not constants;
- every cell's class and its plain attributes (numbers, strings, tuples, dtypes: dropout rates,
  LoRA scaling, eps, head counts, clip norm...) and the bytes of every non-Parameter Tensor
  attribute (rope tables, masks), which the compiler folds into the graph.

Only the step cell's own compile runs with the cache switched on; the variables are restored
right after, so eval or predict graphs compiled later in the process never touch it.

On by default in graph mode; PETRUN_COMPILE_CACHE=0 turns it off, and a user who sets
MS_COMPILER_CACHE_ENABLE themselves keeps their own setting. Folders live under
$PETRUN_CACHE_DIR/compile (else $XDG_CACHE_HOME/petrun/compile, ~/.cache/petrun/compile); the
newest KEEP are kept.

MindSpore reads MS_COMPILER_CACHE_PATH once, at a process's first compile with the cache on, and
numbers that process's cached graphs 0, 1, 2 ... inside that one folder, whatever the variable
says later (checked on 2.10: graphs A then B in one process write A/compile_cache_0 and
A/compile_cache_1; a later process compiling A then C loads B's graph as C's and computes B).
So only graphs of the process's first key use the cache; a graph of another key compiles without
it (length buckets, a second config in one process), which is slower but never loads a stranger.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

from mindspore.ops import Primitive

KEEP = 16


def enabled() -> bool:
    import mindspore as ms
    if os.environ.get("PETRUN_COMPILE_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if "MS_COMPILER_CACHE_ENABLE" in os.environ:   # the user's own choice stands
        return False
    if os.environ.get("MS_ROLE"):                  # distributed: every rank compiles its own
        return False
    # MindSpore's cache parses the entry script for its dependencies and fails with
    # FileNotFoundError when there is none to read (`python -c`: argv[0] is "-c").
    if sys.argv and sys.argv[0] and not os.path.isfile(sys.argv[0]):
        return False
    return ms.get_context("mode") == ms.GRAPH_MODE


def cache_root() -> Path:
    if os.environ.get("PETRUN_CACHE_DIR"):
        base = Path(os.path.expanduser(os.environ["PETRUN_CACHE_DIR"]))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "petrun"
    return base / "compile"


# Code that runs inside a training graph: the model families and layers, the PET methods, the
# step cells and the optimizer. The modules of all the step cell's cells are added per graph.
GRAPH_SOURCES = ("models", "pet", "train/step.py", "train/optim.py", "train/compile_cache.py")
_FILE_DIGESTS: dict[str, str] = {}


def _file_digest(path: Path) -> str:
    key = str(path)
    if key not in _FILE_DIGESTS:
        _FILE_DIGESTS[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _FILE_DIGESTS[key]


def source_digest(cell=None) -> str:
    """Digest of the graph code: GRAPH_SOURCES plus the file of every cell class under `cell`.
    (Not all of petrun: edits to the CLI or checkpoint code must not cost a recompile.)"""
    import inspect

    # The package folder from this file's own path: importing `petrun` would import its API
    # facade, which imports the recipe that imports this module (tests/test_architecture.py).
    root = Path(__file__).resolve().parents[1]
    files = set()
    for name in GRAPH_SOURCES:
        p = root / name
        files.update(p.rglob("*.py") if p.is_dir() else [p])
    if cell is not None:
        for _, c in cell.cells_and_names():
            try:
                files.add(Path(inspect.getsourcefile(type(c))).resolve())
            except (TypeError, OSError):
                pass
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(str(path).encode())
        h.update(_file_digest(path).encode())
    return h.hexdigest()


def _plain(value):
    """A stable text for attribute values the compiler may fold in; None for what it ignores."""
    import mindspore as ms
    if isinstance(value, (bool, int, float, str)) or value is None:
        return repr(value)
    if isinstance(value, ms.Parameter):
        return None                                # listed with the parameters
    if isinstance(value, ms.Tensor):
        import numpy as np
        arr = value.asnumpy()
        return f"T{arr.dtype}{arr.shape}:{hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()}"
    if isinstance(value, ms.dtype.Type):
        return str(value)
    if isinstance(value, Primitive):   # its attributes (dropout seeds, transposes) are compiled in
        return f"{value.name}{sorted((k, repr(v)) for k, v in value.attrs.items())}"
    if isinstance(value, (tuple, list)):
        parts = [_plain(v) for v in value]
        return None if any(p is None for p in parts) else f"({','.join(parts)})"
    return None


def graph_key(cell, args) -> str:
    import mindspore as ms
    h = hashlib.sha256()

    debug = os.environ.get("PETRUN_COMPILE_CACHE_DEBUG")
    lines = []

    def put(*parts):
        text = "\x1f".join(map(str, parts))
        h.update(text.encode())
        h.update(b"\x1e")
        if debug:
            lines.append(text)
    from petrun.version import __version__
    put("ms", ms.__version__, "petrun", __version__, source_digest())
    put("ctx", ms.get_context("mode"), repr(ms.get_context("jit_config")),
        ms.get_context("device_target"))
    for a in args:
        put("arg", tuple(a.shape), a.dtype) if isinstance(a, ms.Tensor) else put("arg", _plain(a))
    for name, p in cell.parameters_and_names():
        put("param", name, tuple(p.shape), p.dtype, p.requires_grad)
    for path, c in cell.cells_and_names():
        attrs = []
        for k, v in sorted(vars(c).items()):
            if k.startswith("_") and k not in ("_params",):
                continue
            text = _plain(v)
            if text is not None:
                attrs.append(f"{k}={text}")
        put("cell", path, type(c).__module__, type(c).__qualname__, *attrs)
        for k, v in sorted(getattr(c, "_tensor_list", {}).items()):
            put("tensor", path, k, _plain(v))
    if debug:
        Path(debug).write_text("\n".join(lines), encoding="utf-8")
    return h.hexdigest()[:32]


def _prune(root: Path, keep: str) -> None:
    try:
        dirs = sorted((d for d in root.iterdir() if d.is_dir() and d.name != keep),
                      key=lambda d: d.stat().st_mtime, reverse=True)
    except OSError:
        return
    for d in dirs[KEEP - 1:]:
        shutil.rmtree(d, ignore_errors=True)


# The key whose folder MindSpore has fixed for this process (see the module doc).
_PROCESS_KEY: list[str] = []


class CachedCompile:
    """Mixin for a graph Cell: its compile() for a new input signature runs with MindSpore's
    compile cache pointed at that graph's own folder."""

    def compile(self, *args, **kwargs):
        import mindspore as ms
        sig = tuple((tuple(a.shape), a.dtype) if isinstance(a, ms.Tensor) else repr(a) for a in args)
        done = self.__dict__.setdefault("_petrun_compiled", set())
        if sig in done or not enabled():
            return super().compile(*args, **kwargs)
        done.add(sig)
        try:
            key = graph_key(self, args)
            if _PROCESS_KEY and _PROCESS_KEY[0] != key:
                return super().compile(*args, **kwargs)
            root = cache_root()
            path = root / key
            path.mkdir(parents=True, exist_ok=True)
            os.utime(path)
            _prune(root, key)
        except OSError:
            return super().compile(*args, **kwargs)
        if not _PROCESS_KEY:
            _PROCESS_KEY.append(key)
        saved = {k: os.environ.get(k) for k in ("MS_COMPILER_CACHE_ENABLE", "MS_COMPILER_CACHE_PATH")}
        os.environ.update(MS_COMPILER_CACHE_ENABLE="1", MS_COMPILER_CACHE_PATH=str(path))
        try:
            return super().compile(*args, **kwargs)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
