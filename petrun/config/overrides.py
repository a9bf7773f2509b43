"""Command-line overrides: `a.b.c=value`, `~a.b`, MindFormers' run_mindformer.py flags.

Every flag is sugar for a dotted override, so `petrun config show` prints exactly what will run.
Unlike MindFormers, a dotted key may create missing parents; the schema then rejects keys that do
not exist with a "did you mean", which is what catches typos.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable

from petrun.config.load import parse_scalar
from petrun.errors import UserError

ORIGIN = "command line"
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


# ------------------------------------------------------------------ run_mindformer.py's flags
# Every flag of run_mindformer.py in MindFormers r1.0 … r1.3 (read from each release branch's
# argparse; r1.3.1 and v1.3.2 have r1.3.0's set), and what petrun does with it:
#
# | flag                           | since  | petrun                                                  |
# |--------------------------------|--------|---------------------------------------------------------|
# | --config                       | r1.0   | --config of every verb                                  |
# | --run_mode                     | r1.0   | run_mode; `petrun run` runs that verb, a verb refuses   |
# |                                |        | another mode (finetune and train are one recipe)        |
# | --mode                         | r1.0   | context.mode                                            |
# | --device_id                    | r1.0   | context.device_id (dropped under a launcher, as MF)     |
# | --device_target                | r1.0   | context.device_target                                   |
# | --do_eval                      | r1.0   | do_eval                                                 |
# | --train_dataset_dir            | r1.0   | train_dataset.data_loader.dataset_dir                   |
# | --eval_dataset_dir             | r1.0   | eval_dataset.data_loader.dataset_dir                    |
# | --predict_data TEXT…|FILE      | r1.0   | predict's input: texts as given (no chat template, as   |
# |                                |        | MF's pipeline), a file one prompt per line; a folder    |
# |                                |        | (MF: images) refused; other verbs refuse it             |
# | --predict_batch_size           | r1.0   | predict: model.model_config.batch_size; others refuse   |
# | --load_checkpoint              | r1.0   | load_checkpoint                                         |
# | --src_strategy_path_or_dir     | r1.0   | src_strategy_path_or_dir                                |
# | --auto_trans_ckpt              | r1.0   | auto_trans_ckpt                                         |
# | --only_save_strategy           | r1.0   | False: accepted; True refused → `petrun ckpt strategy`  |
# | --resume_training              | r1.0   | resume_training (finetune/train; also a ckpt name)      |
# | --strategy_load_checkpoint     | r1.0   | parallel.strategy_ckpt_load_file (a file; a folder is   |
# |                                |        | refused: MF's folder branch crashes on a typo)          |
# | --remote_save_url              | r1.0   | remote_save_url: accepted, ignored with a notice (MF    |
# |                                |        | uploads only on ModelArts)                              |
# | --seed                         | r1.0   | seed                                                    |
# | --use_parallel                 | r1.0   | use_parallel                                            |
# | --profile                      | r1.0   | profile: accepted, ignored with a notice                |
# | --options k=v …                | r1.0   | the overrides k=v … (values parse like YAML; MF turns   |
# |                                |        | every true/false into False, a bug petrun does not copy)|
# | --epochs                       | r1.0   | runner_config.epochs                                    |
# | --batch_size                   | r1.0   | runner_config.batch_size                                |
# | --gradient_accumulation_steps  | r1.0   | runner_config.gradient_accumulation_steps               |
# | --sink_mode                    | r1.0   | runner_config.sink_mode: accepted, ignored with a notice|
# | --num_samples                  | r1.0   | refused: petrun does not subsample data yet →           |
# |                                |        | runner_config.stop_step=N caps the optimizer steps      |
# | --output_dir                   | r1.0   | output_dir                                              |
# | --transform_process_num        | r1.2.0 | transform_process_num: accepted, ignored with a notice  |
# |                                |        | (petrun reshards in one process)                        |
# | --modal_type                   | r1.3.0 | refused: petrun's models take text only                 |
# | --adapter_id                   | r1.3.0 | refused: no SLoRA (MF reads it only for pet_type slora) |
# |                                |        | → --adapter PATH loads one adapter                      |
# | --register_path                | r1.3.0 | refused: petrun builds only its own model classes       |
# | --do_sample (v1.5.0, later)    |        | model.model_config.do_sample                            |
# | --a.b.c VALUE (any release)    |        | the override a.b.c=VALUE                                |


@dataclass(frozen=True)
class MFFlag:
    since: str                 # first release whose run_mindformer.py has the flag
    key: str | None = None     # the config key it sets (None: refused, or a verb's own input)
    kind: str = "str"          # str | int | bool | bool_or_str
    notice: str = ""           # petrun keeps the key but does not act on it: said when given
    refuse: str = ""           # why petrun refuses the flag …
    fix: str = ""              # … and what to write instead
    verb: str | None = None    # the one verb that reads it (run.py takes it before parsing)


_PREDICT_ONLY = "MindFormers ignores it in the other run modes, so here it would do nothing"
MF_FLAG_TABLE: dict[str, MFFlag] = {
    "run_mode": MFFlag("r1.0", "run_mode"),
    "mode": MFFlag("r1.0", "context.mode", "int"),
    "device_id": MFFlag("r1.0", "context.device_id", "int"),
    "device_target": MFFlag("r1.0", "context.device_target"),
    "do_eval": MFFlag("r1.0", "do_eval", "bool"),
    "train_dataset_dir": MFFlag("r1.0", "train_dataset.data_loader.dataset_dir"),
    "eval_dataset_dir": MFFlag("r1.0", "eval_dataset.data_loader.dataset_dir"),
    "predict_data": MFFlag("r1.0", verb="predict", refuse=_PREDICT_ONLY,
                           fix="petrun predict --config C --predict_data TEXT (or petrun run "
                               "--run_mode predict …)"),
    "predict_batch_size": MFFlag("r1.0", "model.model_config.batch_size", "int", verb="predict",
                                 refuse=_PREDICT_ONLY,
                                 fix="drop it, or predict: petrun predict --predict_batch_size N"),
    "load_checkpoint": MFFlag("r1.0", "load_checkpoint"),
    "src_strategy_path_or_dir": MFFlag("r1.0", "src_strategy_path_or_dir"),
    "auto_trans_ckpt": MFFlag("r1.0", "auto_trans_ckpt", "bool"),
    "only_save_strategy": MFFlag("r1.0", "only_save_strategy", "bool"),
    "resume_training": MFFlag("r1.0", "resume_training", "bool_or_str"),
    "strategy_load_checkpoint": MFFlag("r1.0", "parallel.strategy_ckpt_load_file", "file"),
    "remote_save_url": MFFlag("r1.0", "remote_save_url", notice=(
        "--remote_save_url is accepted and ignored: MindFormers uploads outputs only on "
        "ModelArts; petrun's stay in output_dir")),
    "seed": MFFlag("r1.0", "seed", "int"),
    "use_parallel": MFFlag("r1.0", "use_parallel", "bool"),
    "profile": MFFlag("r1.0", "profile", "bool", notice=(
        "--profile is accepted and ignored: petrun has no profiler hook (per-step times are in "
        "output_dir/log/rank_N/metrics.jsonl)")),
    "epochs": MFFlag("r1.0", "runner_config.epochs", "int"),
    "batch_size": MFFlag("r1.0", "runner_config.batch_size", "int"),
    "gradient_accumulation_steps": MFFlag("r1.0", "runner_config.gradient_accumulation_steps",
                                          "int"),
    "sink_mode": MFFlag("r1.0", "runner_config.sink_mode", "bool", notice=(
        "--sink_mode is accepted and ignored: petrun feeds every step from the host (results "
        "are the same; only Ascend's throughput differs)")),
    "num_samples": MFFlag("r1.0", refuse=(
        "petrun does not take a subset of the dataset yet (MindFormers sets "
        "data_loader.num_samples)"),
        fix="cap the run with runner_config.stop_step=STEPS, or give a smaller dataset file"),
    "output_dir": MFFlag("r1.0", "output_dir"),
    "transform_process_num": MFFlag("r1.2.0", "transform_process_num", "int", notice=(
        "--transform_process_num is accepted and ignored: petrun reshards a checkpoint in one "
        "process per rank")),
    "modal_type": MFFlag("r1.3.0", refuse="petrun's models (Llama2, ChatGLM2, GPT2) take text "
                         "only; --modal_type is for MindFormers' multi-modal pipelines",
                         fix="drop --modal_type and give the text with --predict_data TEXT"),
    "adapter_id": MFFlag("r1.3.0", refuse="petrun has no SLoRA (several adapters served at "
                         "once), the only PET type MindFormers reads --adapter_id for",
                         fix="load one adapter with --adapter PATH (a .ckpt or a run's "
                             "checkpoint/rank_N/ folder)"),
    "register_path": MFFlag("r1.3.0", refuse="petrun builds only its own model classes; "
                            "--register_path imports out-of-tree MindFormers classes",
                            fix="use a model petrun ships (model.arch.type LlamaForCausalLM, "
                                "ChatGLM2ForConditionalGeneration or GPT2LMHeadModel)"),
    "do_sample": MFFlag("v1.5.0", "model.model_config.do_sample", "bool"),
}
# The flags that set a config key, as (key, kind).
MF_FLAGS: dict[str, tuple[str, str]] = {
    name: (f.key, f.kind) for name, f in MF_FLAG_TABLE.items() if f.key and not f.refuse}


@dataclass(frozen=True)
class Override:
    key: str
    value: Any = None
    delete: bool = False
    text: str = ""  # what the user typed, for messages
    notice: str = ""  # said once when the run starts (a flag petrun accepts but ignores)


def str2bool(flag: str, text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("true", "false"):
        return low == "true"
    raise UserError(f"--{flag} expects True or False, got '{text}'", key=f"--{flag}",
                    fix=f"write --{flag} True or --{flag} False")


def refuse_flag(flag: str) -> None:
    """Raise the refusal of a run_mindformer.py flag petrun does not take (here)."""
    spec = MF_FLAG_TABLE[flag]
    what = (f"is an input of {spec.verb} alone" if spec.verb else
            f"(run_mindformer.py since {spec.since}) is not supported")
    raise UserError(f"--{flag} {what}: {spec.refuse}", key=f"--{flag}", fix=spec.fix)


def convert_flag(flag: str, text: str) -> Override:
    spec = MF_FLAG_TABLE.get(flag)
    if spec is None or spec.refuse or not spec.key:
        refuse_flag(flag)
    key, kind = spec.key, spec.kind
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
    elif kind == "file" and os.path.isdir(text):
        # MindFormers meant a folder to stand for its first .ckpt, but that branch calls the
        # misspelt str.endwith and crashes in every release r1.0-r1.3: only a file ever worked.
        raise UserError(f"--{flag} {text} is a folder", key=f"--{flag}", file=text,
                        fix=f"give the strategy file itself, e.g. --{flag} {text.rstrip('/')}/"
                            "ckpt_strategy_rank_0.ckpt")
    else:
        value = text
    if flag == "only_save_strategy" and value:
        # MindFormers compiles, writes the strategy files and exits; a petrun run would train.
        raise UserError("--only_save_strategy True asks for strategy files without a run",
                        key=f"--{flag}",
                        fix="write them with petrun ckpt strategy --config C --out DIR "
                            "(no compile, no devices needed)")
    return Override(key, value, text=f"--{flag} {text}", notice=spec.notice)


def take_nargs(args: list[str], i: int) -> tuple[list[str], int]:
    """The values of an argparse nargs='+' option at args[i]: `--x=a b c` or `--x a b c`, up to
    the next word starting with '--' (argparse stops at any option-looking word). Returns the
    values and the index of the next unread word."""
    name, eq, first = args[i].partition("=")
    values = [first] if eq else []
    j = i + 1
    while j < len(args) and not args[j].startswith("--"):
        values.append(args[j])
        j += 1
    if not values:
        raise UserError(f"{name} needs at least one value", key=name, fix=f"write {name} VALUE …")
    return values, j


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

    Accepts `a.b=v`, `~a.b`, MindFormers' flags (`--use_parallel True`, `--seed=1`,
    `--options a.b=1 c=2`) and MindFormers' free-form dotted pairs
    (`--model.model_config.seq_length 128`).
    """
    args = list(args)
    out: list[Override] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--options" or word.startswith("--options="):
            # run_mindformer.py's --options k=v … (argparse nargs='+'): each pair is an override
            values, i = take_nargs(args, i)
            for pair in values:
                if "=" not in pair or pair.startswith("~"):
                    raise UserError(f"--options takes key=value pairs, got '{pair}'", key="--options",
                                    fix="write --options a.b.c=1 d.e=x (or the same pairs without "
                                        "--options)")
                out.append(parse_override(pair))
            continue
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            spec = MF_FLAG_TABLE.get(name)
            if spec is not None and spec.refuse:
                refuse_flag(name)    # before its value: a refused nargs flag may have several
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
                                fix=f"known MindFormers flags: {known}, --options k=v …; or use a "
                                    "dotted override key=value")
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
