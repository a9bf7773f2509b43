"""Columnar record sources, read with pyarrow: Parquet files, Arrow files and Hugging Face
`Dataset.save_to_disk` folders.

A save_to_disk folder holds state.json (its `_data_files` name the Arrow shards, in order),
dataset_info.json and data-*.arrow files in Arrow's IPC stream format. A DatasetDict folder holds
dataset_dict.json ({"splits": [...]}) and one such folder per split: one split is read — the one
asked for (train_dataset.split / --split), else "train" for training and "validation" (or
"test") for evaluation, else the only one — and a split that is not there is refused with the
list of those that are.

A plain folder of *.parquet files (no state.json or dataset_dict.json: a dataset's Parquet
shards, as the Hugging Face Hub serves them) is read as one table: every .parquet file directly
in it, in sorted name order, each read by pyarrow.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from petrun.errors import UserError

STATE = "state.json"
DATASET_DICT = "dataset_dict.json"
_LOG = logging.getLogger("petrun")


def is_hf_folder(path: str) -> bool:
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, STATE))
                                    or os.path.isfile(os.path.join(path, DATASET_DICT)))


def parquet_files(path: str) -> list[str]:
    """The .parquet files directly in folder `path`, sorted by name (shard order)."""
    if not os.path.isdir(path):
        return []
    return [os.path.join(path, n) for n in sorted(os.listdir(path))
            if n.endswith(".parquet") and not n.startswith(".")
            and os.path.isfile(os.path.join(path, n))]


def is_table_folder(path: str) -> bool:
    """A save_to_disk folder or a folder of Parquet files."""
    return is_hf_folder(path) or bool(parquet_files(path))


def folder_files(path: str, *, key: str | None = None, split: str | None = None) -> list[str]:
    """The data files of a table folder, in reading order."""
    if is_hf_folder(path):
        return arrow_files(path, key=key, split=split)
    return parquet_files(path)


def pick_split(path: str, splits: list[str], split: str | None, key: str | None) -> str:
    eval_side = bool(key) and key.startswith("eval_dataset")
    if split is not None:
        if split not in splits:
            raise UserError(f"this DatasetDict has no split '{split}'; it has "
                            f"{', '.join(splits)}", file=path, key=_split_key(key),
                            fix=f"set the split to one of {', '.join(splits)}")
        return split
    for choice in (("validation", "valid", "test") if eval_side else ("train",)):
        if choice in splits:
            return choice
    if len(splits) == 1:
        return splits[0]
    raise UserError(f"this DatasetDict has splits {', '.join(splits)} and none is "
                    f"'{'validation' if eval_side else 'train'}'", file=path, key=_split_key(key),
                    fix=f"choose one: set {_split_key(key)} to one of {', '.join(splits)}")


def _split_key(key: str | None) -> str:
    section = key.split(".")[0] if key and key.endswith("dataset_dir") else None
    return f"{section}.split" if section else "--split"


def arrow_files(path: str, *, key: str | None = None, split: str | None = None) -> list[str]:
    """The Arrow files of a save_to_disk folder (a DatasetDict's chosen split), in order."""
    dd = os.path.join(path, DATASET_DICT)
    if os.path.isfile(dd):
        splits = _json(dd, key).get("splits")
        if not isinstance(splits, list) or not splits:
            raise UserError("dataset_dict.json lists no splits", file=dd, key=key,
                            fix="re-save the data with DatasetDict.save_to_disk")
        chosen = pick_split(path, [str(s) for s in splits], split, key)
        if split is None and len(splits) > 1:
            _LOG.info("%s: reading split '%s' of %s (set %s to read another)", path, chosen,
                      ", ".join(map(str, splits)), _split_key(key))
        return arrow_files(os.path.join(path, chosen), key=key)
    state = _json(os.path.join(path, STATE), key)
    names = [f.get("filename") for f in state.get("_data_files") or [] if isinstance(f, dict)]
    if not names:
        names = sorted(n for n in os.listdir(path) if n.endswith(".arrow"))
    files = [os.path.join(path, n) for n in names if n]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing or not files:
        raise UserError("the save_to_disk folder lacks its data file "
                        f"{os.path.basename(missing[0])}" if missing else "the save_to_disk folder has no .arrow data files",
                        file=path, key=key, fix="copy the whole folder written by save_to_disk")
    return files


def _json(path: str, key: str | None) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read this Hugging Face metadata file: {exc}", file=path, key=key,
                        fix="re-save the data with save_to_disk") from None
    return data if isinstance(data, dict) else {}


def _read_table(file: str, key: str | None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if file.endswith(".parquet"):
            return pq.read_table(file)
        with pa.memory_map(file) as source:
            try:   # datasets writes the IPC stream format; an Arrow "file" has a footer
                return pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                return pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowException) as exc:
        kind = "Parquet" if file.endswith(".parquet") else "Arrow"
        raise UserError(f"cannot read the {kind} data: {exc}", file=file, key=key,
                        fix=f"check that it is a complete {kind} file") from None


def _files(path: str, key: str | None, split: str | None) -> list[str]:
    if os.path.isdir(path):
        files = folder_files(path, key=key, split=split)
        if not files:
            raise UserError("no state.json, dataset_dict.json or .parquet files in this folder",
                            file=path, key=key, fix="pass a save_to_disk folder, a folder of "
                                                    ".parquet files, or a data file")
        return files
    if not os.path.isfile(path):
        raise UserError("input file not found", file=path, key=key, fix="check the path")
    return [path]


def read_rows(path: str, *, key: str | None = None, split: str | None = None) -> list[Any]:
    """Every row as a dict (nested lists and structs as lists and dicts)."""
    rows: list[Any] = []
    for f in _files(path, key, split):
        rows += _read_table(f, key).to_pylist()
    return rows


def peek(path: str, *, key: str | None = None, split: str | None = None) -> tuple[Any, int]:
    """(first row or None, row count)."""
    first, count = None, 0
    for f in _files(path, key, split):
        table = _read_table(f, key)
        if first is None and table.num_rows:
            first = table.slice(0, 1).to_pylist()[0]
        count += table.num_rows
    return first, count
