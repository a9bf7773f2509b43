"""Load MindFormers-style YAML: PyYAML 1.1 semantics, `base_config` inheritance, provenance.

What MindFormers does (reference/mindformers.md §1.12, §2.1) and what we keep:
- `base_config` is a path or a list of paths relative to the declaring file; bases are combined
  with a SHALLOW top-level update (a later base replaces a whole section), then the declaring file
  is DEEP-merged on top (nested mappings merge key by key, lists replace).
- Anchors/aliases resolve, but every alias becomes an independent copy (MindFormers converts each
  mapping into its own config object), so overriding `train_dataset` never edits a shared object.

What we add: `1e-5` is a float (PyYAML 1.1 would make it the string "1e-5"), duplicate keys in one
mapping are an error instead of "last one wins", and every leaf remembers `file:line` so errors
can say where a bad value was written.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from petrun.errors import UserError

# YAML 1.1 floats plus exponent-without-dot forms such as 1e-5 and 5E3.
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Loader(yaml.SafeLoader):
    """SafeLoader with exponent floats and duplicate-key detection."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key '{key}' (first defined on line {seen[key].line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def parse_scalar(text: str) -> Any:
    """Parse one override value with the same rules as the YAML files."""
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _line_map(node: yaml.Node, prefix: str, file: str, out: dict[str, str]) -> None:
    """Record `file:line` for every dotted key under `node` (aliases share their anchor's lines)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                _line_map(value_node, prefix, file, out)
                continue
            key = f"{prefix}{key_node.value}"
            out.setdefault(key, f"{file}:{key_node.start_mark.line + 1}")
            _line_map(value_node, key + ".", file, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = f"{prefix}{i}"
            out.setdefault(key, f"{file}:{item.start_mark.line + 1}")
            _line_map(item, key + ".", file, out)


def read_yaml(path: Path) -> tuple[dict, dict[str, str]]:
    """Read one YAML file into (mapping, {dotted key: 'file:line'})."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("config file not found", file=str(path),
                        fix="check the path (relative paths are resolved against the current "
                            "directory), or name a shipped config: `petrun configs list`")
    except IsADirectoryError:
        raise UserError("expected a YAML file but this is a directory", file=str(path),
                        fix="pass the .yaml file itself")
    except (PermissionError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file ({e.__class__.__name__}: {e})", file=str(path),
                        fix="make the file readable UTF-8 text")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise UserError(f"invalid YAML: {problem}", file=where,
                        fix="correct the YAML syntax at that line (indentation, a missing ':' or quote)")
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"the top level must be a mapping of sections, got {type(data).__name__}",
                        file=str(path), fix="start the file with keys such as 'model:' and 'runner_config:'")
    lines: dict[str, str] = {}
    if node is not None:
        _line_map(node, "", str(path), lines)
    # Break alias sharing: each use of an anchor becomes its own copy.
    return copy.deepcopy(data), lines


def _drop_prefix(origins: dict[str, str], key: str) -> None:
    for k in [k for k in origins if k == key or k.startswith(key + ".")]:
        del origins[k]


def deep_merge(base: dict, top: dict, base_origins: dict[str, str], top_origins: dict[str, str],
               prefix: str = "") -> None:
    """Merge `top` into `base` in place: mappings merge key by key, everything else replaces."""
    for key, value in top.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            if dotted in top_origins:
                base_origins[dotted] = top_origins[dotted]
            deep_merge(base[key], value, base_origins, top_origins, dotted + ".")
        else:
            base[key] = value
            _drop_prefix(base_origins, dotted)
            base_origins.update({k: v for k, v in top_origins.items()
                                 if k == dotted or k.startswith(dotted + ".")})


def load_layered(path: str | Path, _chain: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """Load `path` with its `base_config` chain resolved, returning (data, origins)."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise UserError(f"base_config cycle: {cycle}", file=str(path), key="base_config",
                        fix="remove the base_config entry that points back to a file already in the chain")
    data, origins = read_yaml(path)
    bases = data.pop("base_config", None)
    _drop_prefix(origins, "base_config")
    if bases in (None, "", []):
        return data, origins
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise UserError(f"base_config must be a path or a list of paths, got {bases!r}",
                        file=str(path), key="base_config", fix="write base_config: ../base.yaml")
    merged: dict = {}
    merged_origins: dict[str, str] = {}
    for base in bases:
        base_path = (path.parent / base)
        if not base_path.is_file():
            raise UserError(f"base_config file '{base}' not found (looked for {base_path})",
                            file=str(path), key="base_config",
                            fix="base_config paths are relative to the file that declares them")
        if base_path.resolve() in (*_chain, resolved):
            cycle = " -> ".join(str(p) for p in (*_chain, resolved, base_path.resolve()))
            raise UserError(f"base_config cycle: {cycle}", file=str(path), key="base_config",
                            fix=f"remove '{base}' from base_config: it is already in the chain")
        base_data, base_origins = load_layered(base_path, (*_chain, resolved))
        # Shallow update: a later base replaces whole top-level sections of earlier ones.
        for key, value in base_data.items():
            merged[key] = value
            _drop_prefix(merged_origins, key)
        merged_origins.update(base_origins)
    deep_merge(merged, data, merged_origins, origins)
    return merged, merged_origins
