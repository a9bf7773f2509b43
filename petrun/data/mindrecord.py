"""Writing and reading tokenized samples on disk: MindRecord (MindFormers' format) and JSON lines.

MindFormers' llama schema (reference/mindformers.md §7.1): `input_ids` and `labels`, int32, shape
[-1], schema name "qa". A MindRecord data file records its own file name in its header, so it cannot
be written under a temporary name and renamed (MindSpore then refuses to open it). Instead the pair
is written under its final name inside a private temporary directory next to the target and then
moved out: the `.db` index first, the data file last, so a data file under the final name always
has its index beside it and is never half-written.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from petrun.atomic import atomic_file

DEFAULT_COLUMNS = ("input_ids", "labels")
# MindFormers' dataset walk: data files end in "mindrecord" plus an optional shard number.
MINDRECORD_NAME = re.compile(r"mindrecord\d*$")
_INT32 = np.iinfo(np.int32)


def schema_for(columns: Sequence[str] = DEFAULT_COLUMNS) -> dict[str, dict[str, Any]]:
    return {c: {"type": "int32", "shape": [-1]} for c in columns}


def is_mindrecord_name(name: str) -> bool:
    return bool(MINDRECORD_NAME.search(os.path.basename(name)))


def find_mindrecord_files(directory: str | os.PathLike) -> list[str]:
    """Data files under `directory` (recursively), sorted; `.db` index files are skipped."""
    found = []
    for root, dirs, files in os.walk(os.fspath(directory)):
        dirs[:] = [d for d in dirs if not d.startswith(".petrun-tmp-")]  # unfinished writes
        found += [os.path.join(root, f) for f in files if is_mindrecord_name(f)]
    return sorted(found)


def shard_set(path: str) -> list[str]:
    """The files MindSpore reads for one MindRecord path: its numbered siblings, if any."""
    m = re.search(r"mindrecord(\d+)$", path)
    if not m:
        return [path]
    stem = path[:m.start(1)]
    folder = os.path.dirname(stem) or "."
    siblings = [os.path.join(os.path.dirname(stem), f) for f in os.listdir(folder)
                if re.fullmatch(re.escape(os.path.basename(stem)) + r"\d+", f)]
    return sorted(siblings, key=lambda f: int(f[len(stem):]))


def _as_int32(values: Any, column: str, index: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"sample {index}: column '{column}' must be a flat list of integers")
    if arr.size and (arr.min() < _INT32.min or arr.max() > _INT32.max):
        raise ValueError(f"sample {index}: column '{column}' has values outside int32")
    return arr.astype(np.int32)


def _rows(samples: Iterable[Mapping[str, Any]], columns: Sequence[str]):
    for i, sample in enumerate(samples):
        missing = [c for c in columns if c not in sample]
        if missing:
            raise ValueError(f"sample {i} has no column(s) {missing}")
        yield {c: _as_int32(sample[c], c, i) for c in columns}


def file_writer_class():
    """mindspore.mindrecord.FileWriter, with Ctrl-C held back during the import: MindSpore
    interrupted halfway through its import aborts the interpreter at exit (core dump, no cleanup)."""
    import signal
    import threading

    if "mindspore.mindrecord" in sys.modules or threading.current_thread() is not threading.main_thread():
        from mindspore.mindrecord import FileWriter
        return FileWriter
    pending = []
    previous = signal.signal(signal.SIGINT, lambda *_: pending.append(True))
    try:
        from mindspore.mindrecord import FileWriter
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt
    return FileWriter


def shard_names(path: str, num_shards: int) -> list[str]:
    """The data files FileWriter makes for `path`: itself, or path0..path{K-1} (MindFormers'
    --file_partition naming)."""
    return [path] if num_shards == 1 else [f"{path}{i}" for i in range(num_shards)]


def existing_files(path: str) -> list[str]:
    """Files of an earlier write of `path` (any shard count: path, pathN), with their indexes."""
    folder, base = os.path.split(path)
    pattern = re.compile(re.escape(base) + r"\d*(\.db)?$")
    return [os.path.join(folder, f) for f in os.listdir(folder) if pattern.fullmatch(f)]


def write_mindrecord(path: str | os.PathLike, samples: Iterable[Mapping[str, Any]], *,
                     columns: Sequence[str] = DEFAULT_COLUMNS, schema_name: str = "qa",
                     overwrite: bool = False, chunk: int = 1000, num_shards: int = 1) -> int:
    """Write samples to one MindRecord file (+ its `.db` index) atomically; returns the count.

    With num_shards K > 1 the set is path0..path{K-1} (rows dealt round-robin, as FileWriter
    does); overwrite then also removes files of an earlier set with another shard count.
    """
    FileWriter = file_writer_class()
    path = os.path.abspath(os.fspath(path))
    if not is_mindrecord_name(path):
        raise ValueError(f"{path}: a MindRecord file name must end in 'mindrecord' "
                         "(MindFormers only finds files named *mindrecord or *mindrecordN)")
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    finals = shard_names(path, num_shards)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    if not overwrite:
        clash = sorted(existing_files(path))
        if clash:
            raise FileExistsError(f"{clash[0]} already exists (pass overwrite=True to replace it)")
    tmpdir = tempfile.mkdtemp(prefix=".petrun-tmp-", dir=parent)
    try:
        tmp = os.path.join(tmpdir, os.path.basename(path))
        writer = FileWriter(tmp, shard_num=num_shards, overwrite=True)
        writer.add_schema(schema_for(columns), schema_name)
        count, batch = 0, []
        for row in _rows(samples, columns):
            batch.append(row)
            if len(batch) >= chunk:
                writer.write_raw_data(batch)
                count, batch = count + len(batch), []
        if batch:
            writer.write_raw_data(batch)
            count += len(batch)
        if count == 0:
            raise ValueError("no samples to write (an empty MindRecord file cannot be read back)")
        writer.commit()
        stale = set(existing_files(path)) - set(finals) - {f + ".db" for f in finals}
        # Indexes first, data files last: a data file under its final name has its index.
        for final in finals:
            os.replace(os.path.join(tmpdir, os.path.basename(final)) + ".db", final + ".db")
        for final in finals:
            os.replace(os.path.join(tmpdir, os.path.basename(final)), final)
        for f in stale:
            os.unlink(f)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    from petrun.data.integrity import remember_written
    remember_written(finals, count)   # just written whole: no need to read it back before a run
    return count


def write_jsonl(path: str | os.PathLike, samples: Iterable[Mapping[str, Any]], *,
                columns: Sequence[str] = DEFAULT_COLUMNS, overwrite: bool = False) -> int:
    """Write samples as JSON lines ({"input_ids": [...], "labels": [...]}) atomically."""
    path = os.path.abspath(os.fspath(path))
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    count = 0
    with atomic_file(path, "w", encoding="utf-8") as f:
        for row in _rows(samples, columns):
            f.write(json.dumps({c: row[c].tolist() for c in columns}, separators=(",", ":")) + "\n")
            count += 1
    return count


def write_samples(path: str | os.PathLike, samples: Iterable[Mapping[str, Any]], *,
                  columns: Sequence[str] = DEFAULT_COLUMNS, overwrite: bool = False,
                  schema_name: str = "qa", num_shards: int = 1) -> int:
    """MindRecord for *.mindrecord names, JSON lines for *.jsonl / *.json."""
    name = os.fspath(path)
    if is_mindrecord_name(name):
        return write_mindrecord(name, samples, columns=columns, overwrite=overwrite,
                                schema_name=schema_name, num_shards=num_shards)
    if num_shards != 1:
        raise ValueError("JSON lines output is one file; shards are for MindRecord output")
    if name.endswith((".jsonl", ".json")):
        return write_jsonl(name, samples, columns=columns, overwrite=overwrite)
    raise ValueError(f"{name}: output must end in .mindrecord, .jsonl or .json")


# --------------------------------------------------------------------------- reading

def _reader(files: str | Sequence[str]):
    from mindspore.mindrecord import FileReader

    return FileReader(_files_arg(files), num_consumer=1)


def read_schema(files: str | Sequence[str]) -> dict[str, dict[str, Any]]:
    """Column → {"type", "shape"} from the header (no samples are read)."""
    reader = _reader(files)
    try:
        return dict(reader.schema())
    finally:
        reader.close()


def count_samples(files: str | Sequence[str]) -> int:
    """Number of samples. A single path counts its whole shard set; a list only those files."""
    import mindspore.dataset as ds

    return int(ds.MindDataset(_files_arg(files), shuffle=False).get_dataset_size())


def read_first(files: str | Sequence[str],
               columns: Sequence[str] | None = None) -> dict[str, np.ndarray] | None:
    """The first sample only (cheap: MindDataset reads one row, FileReader would prefetch)."""
    import mindspore.dataset as ds

    data = ds.MindDataset(_files_arg(files), columns_list=list(columns) if columns else None,
                          shuffle=False, num_samples=1)
    for row in data.create_dict_iterator(num_epochs=1, output_numpy=True):
        return dict(row)
    return None


def _files_arg(files: str | Sequence[str]) -> str | list[str]:
    return files if isinstance(files, str) else list(files)


def read_mindrecord(files: str | Sequence[str],
                    columns: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
    """All samples in file order (for tests and inspection; training uses loader.build_dataset)."""
    import mindspore.dataset as ds

    data = ds.MindDataset(_files_arg(files), columns_list=list(columns) if columns else None,
                          shuffle=False)
    return list(data.create_dict_iterator(num_epochs=1, output_numpy=True))
