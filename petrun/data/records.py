"""Raw records with where each one starts, so a bad record can be reported by place.

A file is a JSON list of records (alpaca_data.json), one JSON object, or JSON lines (AdvertiseGen's
train.json). In JSON lines an invalid line is a bad record (counted, reported, skipped); a JSON list
that is itself broken stops with the line of the break, since nothing after it can be trusted.
"""
from __future__ import annotations

import bisect
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from petrun.errors import UserError


def _where(line: int, index: int | None) -> str:
    # A JSON list may sit on one line, where "line 1" would name every record alike.
    return f"line {line}" if index is None else f"record {index} (line {line})"


@dataclass(frozen=True)
class Record:
    line: int                 # 1-based line the record starts on
    obj: Any
    index: int | None = None  # 1-based position in a JSON list; None in JSON lines

    @property
    def where(self) -> str:
        return _where(self.line, self.index)


@dataclass(frozen=True)
class BadRecord:
    line: int
    reason: str
    index: int | None = None

    @property
    def where(self) -> str:
        return _where(self.line, self.index)

    @property
    def order(self) -> tuple[int, int]:
        return self.line, self.index or 0


def read_text(path: str, key: str | None = None) -> str:
    if os.path.isdir(path):
        raise UserError("is a directory, not an input file", file=path, key=key,
                        fix="pass the file inside it (alpaca JSON, AdvertiseGen JSON lines or "
                            "wikitext text)")
    if not os.path.isfile(path):
        raise UserError("input file not found", file=path, key=key, fix="check the path")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the input: {exc}", file=path, key=key,
                        fix="save the file as UTF-8") from None


def read_records(path: str, *, key: str | None = None) -> tuple[list[Record], list[BadRecord]]:
    """(records, bad lines) of a JSON list, a single JSON object, or JSON lines."""
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
