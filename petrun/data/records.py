"""The one reader of record files, with where each record starts so a bad one can be reported by
place. Every data path reads through it: prepare, the loader (tokenized and raw JSON), predict's
prompt files, the tokenizer trainer.

A source is a JSON list of records (alpaca_data.json), one JSON object, JSON lines (AdvertiseGen's
train.json), a Parquet file, an Arrow file, a Hugging Face `save_to_disk` folder (state.json +
*.arrow; a DatasetDict folder, dataset_dict.json + one folder per split, is read at one split), or
a folder of .parquet files (read in sorted name order).
In JSON lines an invalid line is a bad record (counted, reported, skipped); a JSON list that is
itself broken stops with the line of the break, since nothing after it can be trusted. Columnar
sources are read with pyarrow (no hand-written Arrow reader); their records are numbered by row.
"""
from __future__ import annotations

import bisect
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from petrun.errors import UserError


TABLE_SUFFIXES = (".parquet", ".arrow")
JSON_SUFFIXES = (".json", ".jsonl")


def _where(line: int | None, index: int | None) -> str:
    # A JSON list may sit on one line, where "line 1" would name every record alike.
    if line is None:   # a table row
        return f"row {index}"
    return f"line {line}" if index is None else f"record {index} (line {line})"


@dataclass(frozen=True)
class Record:
    line: int | None          # 1-based line the record starts on; None for a table row
    obj: Any
    index: int | None = None  # 1-based position in a JSON list; None in JSON lines

    @property
    def where(self) -> str:
        return _where(self.line, self.index)


@dataclass(frozen=True)
class BadRecord:
    line: int | None
    reason: str
    index: int | None = None

    @property
    def where(self) -> str:
        return _where(self.line, self.index)

    @property
    def order(self) -> tuple[int, int]:
        return self.line or 0, self.index or 0


def is_table(path: str) -> bool:
    """A Parquet/Arrow file, a Hugging Face save_to_disk folder or a folder of Parquet files
    (read by petrun.data.tables)."""
    from petrun.data import tables
    return path.endswith(TABLE_SUFFIXES) or tables.is_table_folder(path)


def read_strict(path: str, *, key: str | None = None, split: str | None = None,
                what: str = "record") -> list[Any]:
    """Every record's object; the first unreadable line stops with its place (for data that must
    be whole: tokenized samples, prompt files)."""
    records, bad = read_records(path, key=key, split=split)
    if bad:
        why = bad[0].reason.removeprefix("invalid JSON ")
        raise UserError(f"{bad[0].where} is not valid JSON {why}", file=path, key=key,
                        fix=f"write one JSON {what} per line, or one JSON list of them")
    if not records:
        raise UserError("no records in the file", file=path, key=key,
                        fix=f"the file must hold JSON {what}s: a JSON list or one per line")
    return [r.obj for r in records]


def peek(path: str, *, key: str | None = None, split: str | None = None) -> tuple[Any, int]:
    """(first record or None, number of records), cheaply: JSON lines are counted without being
    parsed after the first; a table's count comes from its metadata."""
    if is_table(path):
        from petrun.data import tables
        return tables.peek(path, key=key, split=split)
    if path.endswith(".jsonl") and os.path.isfile(path):
        first, count = None, 0
        try:
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        count += 1
                        first = first if first is not None else (lineno, line)
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read the input: {exc}", file=path, key=key,
                            fix="save the file as UTF-8") from None
        if first is None:
            return None, 0
        try:
            return json.loads(first[1]), count
        except json.JSONDecodeError as exc:
            raise UserError(f"line {first[0]} is not valid JSON ({exc.msg})", file=path, key=key,
                            fix="write one JSON object per line") from None
    records, bad = read_records(path, key=key)
    return (records[0].obj if records else None), len(records) + len(bad)


def read_text(path: str, key: str | None = None) -> str:
    if os.path.isdir(path):
        raise UserError("is a directory, not an input file (nor a Hugging Face save_to_disk "
                        "folder: no state.json or dataset_dict.json in it)", file=path, key=key,
                        fix="pass the file inside it (JSON, JSON lines, Parquet, Arrow, or "
                            "wikitext text), or a folder written by Dataset.save_to_disk")
    if not os.path.isfile(path):
        raise UserError("input file not found", file=path, key=key, fix="check the path")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the input: {exc}", file=path, key=key,
                        fix="save the file as UTF-8") from None


def read_records(path: str, *, key: str | None = None,
                 split: str | None = None) -> tuple[list[Record], list[BadRecord]]:
    """(records, bad lines) of a JSON list, a single JSON object, JSON lines, or a table source
    (Parquet, Arrow, save_to_disk folder; `split` picks a DatasetDict's split)."""
    if is_table(path):
        from petrun.data import tables
        return [Record(None, obj, i) for i, obj in
                enumerate(tables.read_rows(path, key=key, split=split), 1)], []
    text = read_text(path, key)
    body = text.lstrip("\ufeff \t\r\n")
    if body.startswith("["):
        return _json_list(text, path, key), []
    if body.startswith("{"):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            return [Record(text[:len(text) - len(body)].count("\n") + 1, whole)], []
    records, bad = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(Record(lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            bad.append(BadRecord(lineno, f"invalid JSON ({exc.msg} at column {exc.colno})"))
    return records, bad


def _json_list(text: str, path: str, key: str | None) -> list[Record]:
    newlines = [m.start() for m in re.finditer("\n", text)]

    def line_of(pos: int) -> int:
        return bisect.bisect_left(newlines, pos) + 1

    def broken(pos: int, what: str):
        return UserError(f"line {line_of(pos)}: {what}", file=path, key=key,
                         fix="the file must be one JSON list of objects, or one object per line "
                             "(JSON lines)")

    decoder = json.JSONDecoder()
    out: list[Record] = []
    i = _skip_ws(text, text.index("[") + 1)
    if text.startswith("]", i):
        i += 1
    else:
        while True:
            try:
                obj, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as exc:
                raise broken(exc.pos, f"invalid JSON ({exc.msg})") from None
            out.append(Record(line_of(i), obj, len(out) + 1))
            i = _skip_ws(text, end)
            if text.startswith(",", i):
                i = _skip_ws(text, i + 1)
                continue
            if text.startswith("]", i):
                i += 1
                break
            raise broken(i, "expected ',' or ']' after a list element")
    if _skip_ws(text, i) != len(text):
        raise broken(i, "unexpected text after the JSON list")
    return out


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in " \t\r\n":
        i += 1
    return i
