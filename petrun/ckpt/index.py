"""Tensor names, shapes and dtypes of a checkpoint file, read without loading a single tensor.

The pre-flight compares them with the model before anything is built, so it must be fast on a
13 GB file and must not import MindSpore.

MindSpore .ckpt (mindspore/train/checkpoint_pb2.py, proto2):
    Checkpoint  { repeated Value value = 1; }
    Value       { required string tag = 1; oneof value { TensorProto tensor = 2;
                  MapTensorProto maptensor = 3; } }
    TensorProto { repeated int64 dims = 1; required string tensor_type = 2;
                  required bytes tensor_content = 3; }
save_checkpoint writes one serialized Checkpoint per Value, concatenated (which protobuf reads as
one message), and splits tensors above 512 MB into several Values with the same tag and the full
dims in each (serialization.py `_write_parameter_data`). With crc_check the file ends in
b"crc_num" + 10 bytes. The reader below walks the wire format and seeks over tensor_content.

safetensors: an 8-byte little-endian header length, then a JSON header
{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

# One dtype table and one TensorInfo for every checkpoint reader: ckpt/stream.py's.
from petrun.ckpt.stream import TensorInfo, dtype_from_ckpt, dtype_from_safetensors
from petrun.errors import UserError

_CRC_TRAILER = b"crc_num"


class _Corrupt(Exception):
    pass


class _Reader:
    """Protobuf wire-format primitives over a seekable binary file, bounded by `end`."""

    def __init__(self, f, end: int):
        self.f = f
        self.end = end

    def pos(self) -> int:
        return self.f.tell()

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.f.read(1)
            if not b:
                raise _Corrupt("unexpected end of file inside a varint")
            byte = b[0]
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise _Corrupt("varint longer than 10 bytes")

    def length(self) -> int:
        n = self.varint()
        if self.pos() + n > self.end:
            raise _Corrupt("a field runs past the end of the file (truncated?)")
        return n

    def skip(self, wire: int) -> None:
        if wire == 0:
            self.varint()
        elif wire == 1:
            self.f.seek(8, os.SEEK_CUR)
        elif wire == 2:
            self.f.seek(self.length(), os.SEEK_CUR)
        elif wire == 5:
            self.f.seek(4, os.SEEK_CUR)
        else:
            raise _Corrupt(f"unsupported wire type {wire}")


def _read_tensor(r: _Reader, end: int) -> tuple[list[int], str]:
    dims: list[int] = []
    dtype = ""
    while r.pos() < end:
        key = r.varint()
        field, wire = key >> 3, key & 7
        if field == 1 and wire == 0:
            dims.append(_signed(r.varint()))
        elif field == 1 and wire == 2:               # packed dims, if a writer ever packs them
            n = r.length()
            stop = r.pos() + n
            while r.pos() < stop:
                dims.append(_signed(r.varint()))
        elif field == 2 and wire == 2:
            dtype = r.f.read(r.length()).decode("utf-8", "replace")
        else:                                         # tensor_content (field 3) and unknowns
            r.skip(wire)
    if r.pos() != end:
        raise _Corrupt("tensor record overruns its length")
    return dims, dtype


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _read_ckpt(path: str) -> dict[str, TensorInfo]:
    out: dict[str, TensorInfo] = {}
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        r = _Reader(f, size)
        while r.pos() < size:
            start = r.pos()
            head = f.read(len(_CRC_TRAILER))
            if head == _CRC_TRAILER and size - start == len(_CRC_TRAILER) + 10:
                break
            f.seek(start)
            key = r.varint()
            if key != 0x0A:                           # Checkpoint.value, length-delimited
                raise _Corrupt(f"unexpected field key {key} at byte {start}")
            n = r.length()
            value_end = r.pos() + n
            tag, info = None, None
            while r.pos() < value_end:
                vkey = r.varint()
                field, wire = vkey >> 3, vkey & 7
                if field == 1 and wire == 2:
                    tag = f.read(r.length()).decode("utf-8", "replace")
                elif field == 2 and wire == 2:
                    n = r.length()
                    tensor_end = r.pos() + n
                    dims, dtype = _read_tensor(r, tensor_end)
                    if dims == [0]:                   # how MindSpore stores a scalar
                        dims = []
                    info = TensorInfo(shape=tuple(dims), dtype=dtype_from_ckpt(dtype))
                else:                                 # map tensors: names only
                    r.skip(wire)
                    info = info or TensorInfo(shape=(), dtype="map")
            if r.pos() != value_end:
                raise _Corrupt("value record overruns its length")
            if tag is None:
                raise _Corrupt(f"record at byte {start} has no name")
            # Slices of one large tensor repeat the tag with the full dims: keep the first.
            out.setdefault(tag, info or TensorInfo(shape=(), dtype="unknown"))
    return out


def _read_safetensors(path: str) -> dict[str, TensorInfo]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise _Corrupt("shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > 100 * 2 ** 20:
            raise _Corrupt("header length is larger than the file")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _Corrupt(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise _Corrupt("header is not a JSON object")
    out, data_end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = tuple(int(d) for d in entry["shape"])
            dtype = dtype_from_safetensors(entry["dtype"])
            data_end = max(data_end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise _Corrupt(f"malformed header entry for {name!r}") from None
        out[name] = TensorInfo(shape=shape, dtype=dtype)
    if 8 + n + data_end > size:
        raise _Corrupt(f"the header describes {8 + n + data_end} bytes but the file has {size} "
                       "(truncated?)")
    return out


def read_index(path: str | os.PathLike, key: str = "load_checkpoint") -> dict[str, TensorInfo]:
    """{name: TensorInfo} of one .ckpt or .safetensors file; UserError if it cannot be read."""
    path = os.fspath(path)
    from petrun.ckpt.io import refuse_pickle
    refuse_pickle(path, key)
    reader = _read_safetensors if path.endswith(".safetensors") else _read_ckpt
    try:
        return reader(path)
    except _Corrupt as e:
        kind = "safetensors" if reader is _read_safetensors else "MindSpore .ckpt"
        raise UserError(f"not a readable {kind} file: {e}", file=path, key=key,
                        fix="the file is truncated, encrypted or of another format; re-save it or "
                            "pick an intact checkpoint") from None
    except OSError as e:
        raise UserError(f"cannot read checkpoint ({e.strerror or e})", file=path, key=key,
                        fix="check the path and its read permission") from None


def checkpoint_index(path: str | os.PathLike, key: str = "load_checkpoint",
                     fmt: str | None = None) -> tuple[dict[str, TensorInfo], list[Path]]:
    """The merged index of what `load_checkpoint` names (a file, or a folder of files) and the
    files it read. A folder follows petrun.ckpt.load.checkpoint_files; fmt "safetensors" reads the
    folder's .safetensors files instead."""
    p = Path(path)
    if p.is_dir() and fmt == "safetensors":
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix == ".safetensors"
                       and not f.name.startswith("."))
        if not files:
            raise UserError("no .safetensors files in this folder", file=str(p), key=key,
                            fix="point load_checkpoint at a file, or set load_ckpt_format: ckpt")
    else:
        from petrun.ckpt.load import checkpoint_files  # no MindSpore import at module level
        files = checkpoint_files(p, key)
    merged: dict[str, TensorInfo] = {}
    for f in files:
        if not os.access(f, os.R_OK):
            raise UserError("checkpoint file is not readable", file=str(f), key=key,
                            fix="fix its permissions (chmod u+r)")
        merged.update(read_index(f, key))
    return merged, files
