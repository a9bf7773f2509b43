"""Command-line overrides: `a.b.c=value`, `~a.b`, MindFormers' run_mindformer.py flags.

Every flag is sugar for a dotted override, so `petrun config show` prints exactly what will run.
Unlike MindFormers, a dotted key may create missing parents; the schema then rejects keys that do
not exist with a "did you mean", which is what catches typos.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from petrun.config.load import parse_scalar
from petrun.errors import UserError

ORIGIN = "command line"
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")

# run_mindformer.py flag -> (dotted key, kind). Booleans accept only true/false in any case,
# like MindFormers' str2bool (reference/mindformers.md §2.2).
MF_FLAGS: dict[str, tuple[str, str]] = {
    "run_mode": ("run_mode", "str"),
    "load_checkpoint": ("load_checkpoint", "str"),
    "auto_trans_ckpt": ("auto_trans_ckpt", "bool"),
    "use_parallel": ("use_parallel", "bool"),
    "train_dataset_dir": ("train_dataset.data_loader.dataset_dir", "str"),
    "eval_dataset_dir": ("eval_dataset.data_loader.dataset_dir", "str"),
    "src_strategy_path_or_dir": ("src_strategy_path_or_dir", "str"),
    "output_dir": ("output_dir", "str"),
    "device_id": ("context.device_id", "int"),
    "device_target": ("context.device_target", "str"),
    "mode": ("context.mode", "int"),
    "seed": ("seed", "int"),
    "do_eval": ("do_eval", "bool"),
    "resume_training": ("resume_training", "bool_or_str"),
    "epochs": ("runner_config.epochs", "int"),
    "batch_size": ("runner_config.batch_size", "int"),
    "gradient_accumulation_steps": ("runner_config.gradient_accumulation_steps", "int"),
    "sink_mode": ("runner_config.sink_mode", "bool"),
    "only_save_strategy": ("only_save_strategy", "bool"),
    "transform_process_num": ("transform_process_num", "int"),
    "do_sample": ("model.model_config.do_sample", "bool"),
}


@dataclass(frozen=True)
class Override:
    key: str
    value: Any = None
    delete: bool = False
    text: str = ""  # what the user typed, for messages


def str2bool(flag: str, text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("true", "false"):
        return low == "true"
    raise UserError(f"--{flag} expects True or False, got '{text}'", key=f"--{flag}",
                    fix=f"write --{flag} True or --{flag} False")


def convert_flag(flag: str, text: str) -> Override:
    key, kind = MF_FLAGS[flag]
    if kind == "bool":
        value: Any = str2bool(flag, text)
    elif kind == "int":
        try:
            value = int(text)
        except ValueError:
            raise UserError(f"--{flag} expects an integer, got '{text}'", key=f"--{flag}",
                            fix=f"write --{flag} 0") from None
    elif kind == "bool_or_str":
        value = str2bool(flag, text) if str(text).lower() in ("true", "false") else text
    else:
        value = text
    return Override(key, value, text=f"--{flag} {text}")


def _check_key(key: str, text: str) -> str:
    if not _KEY_RE.match(key):
        raise UserError(f"bad override '{text}': '{key}' is not a dotted key",
                        key=key or text, fix="write overrides as a.b.c=value, or ~a.b.c to delete a key")
    return key


def parse_override(text: str) -> Override:
    """Parse `a.b=value` or `~a.b`."""
    if text.startswith("~"):
        if "=" in text:
            raise UserError(f"bad override '{text}': a deletion takes no value", key=text,
                            fix=f"write {text.split('=')[0]}")
        return Override(_check_key(text[1:], text), delete=True, text=text)
    if "=" not in text:
        raise UserError(f"bad override '{text}': expected key=value", key=text,
                        fix="write overrides as a.b.c=value (no spaces around '='), or ~a.b.c to delete")
    key, _, raw = text.partition("=")
    return Override(_check_key(key.strip(), text), parse_scalar(raw), text=text)


def parse_args(args: Iterable[str]) -> list[Override]:
    """Turn leftover CLI words into overrides.

    Accepts `a.b=v`, `~a.b`, MindFormers' flags (`--use_parallel True`, `--seed=1`) and MindFormers'
    free-form dotted pairs (`--model.model_config.seq_length 128`).
    """
    args = list(args)
    out: list[Override] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            if not eq:
                if i + 1 >= len(args):
                    raise UserError(f"flag '{word}' needs a value", key=word,
                                    fix=f"write {word} VALUE")
                value = args[i + 1]
                i += 1
            if name in MF_FLAGS:
                out.append(convert_flag(name, value))
            elif "." in name:
                out.append(Override(_check_key(name, word), parse_scalar(value), text=f"{word} {value}"))
            else:
                known = ", ".join(f"--{f}" for f in MF_FLAGS)
                raise UserError(f"unknown option '{word}'", key=word,
                                fix=f"known MindFormers flags: {known}; or use a dotted override key=value")
        else:
            out.append(parse_override(word))
        i += 1
    return out


def _child(node: Any, part: str) -> Any:
    """node[part] for a mapping, or node[int(part)] for a list (`callbacks.1.prefix=x`)."""
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    return None


def apply_overrides(data: dict, origins: dict[str, str], overrides: Iterable[Override]) -> None:
    """Apply overrides in order, in place. List items are addressed by index."""
    for ov in overrides:
        parts = ov.key.split(".")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            nxt = _child(node, part)
            if nxt is None and not ov.delete and isinstance(node, dict):
                nxt = node[part] = {}
            if not isinstance(nxt, (dict, list)):
                where = ".".join(parts[: depth + 1])
                what = "does not exist" if nxt is None else "is not a mapping or list"
                raise UserError(f"override '{ov.text}' goes inside '{where}', which {what}",
                                key=ov.key, fix=f"override '{where}' itself, or check the key path")
            node = nxt
        last = parts[-1]
        if isinstance(node, list):
            if not (last.isdigit() and int(last) < len(node)):
                raise UserError(f"override '{ov.text}': '{last}' is not an index of the "
                                f"{len(node)}-item list", key=ov.key,
                                fix=f"use an index from 0 to {len(node) - 1}")
            index: Any = int(last)
        else:
            index = last
        if ov.delete:
            if isinstance(node, dict) and last not in node:
                raise UserError(f"cannot delete '{ov.key}': it is not set", key=ov.key,
                                fix="run `petrun config show --config ...` to see the resolved keys")
            del node[index]
            for k in [k for k in origins if k == ov.key or k.startswith(ov.key + ".")]:
                del origins[k]
        else:
            node[index] = ov.value
            for k in [k for k in origins if k.startswith(ov.key + ".")]:
                del origins[k]
            origins[ov.key] = ORIGIN
