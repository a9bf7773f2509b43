"""Tensor files read and written one tensor at a time: safetensors and MindSpore .ckpt.

Why by hand rather than through the libraries:
- `mindspore.save_checkpoint` needs every tensor in memory at once (a dict or Parameter list), and
  `safetensors.numpy.save_file` too; converting a 13 GB model that way needs ≥ 2× its size.
  Both formats are simple enough to stream: a .ckpt is a concatenation of serialized
  `Checkpoint` protobuf messages with one `Value` each (mindspore/train/checkpoint.proto), and a
  safetensors file is an 8-byte header length, a JSON header, then raw little-endian data.
- `safetensors.safe_open(framework="np")` cannot return bfloat16 tensors (numpy has no bf16),
  and bf16 is how most HF checkpoints ship. Here a bf16 tensor is carried as its raw uint16 bits:
  renames, transposes, splits and concatenations move elements without looking at them, and a
  dtype change goes through float32.
No MindSpore import: a conversion runs without the framework's start-up cost and memory.

A tensor in transit is a numpy array plus its dtype name (`float32`, `bfloat16`, ...); for
bfloat16 the array's numpy dtype is uint16.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from petrun.errors import UserError

# dtype name → (numpy storage dtype, safetensors code, MindSpore ckpt tensor_type)
DTYPES = {
    "float64": (np.float64, "F64", "Float64"),
    "float32": (np.float32, "F32", "Float32"),
    "float16": (np.float16, "F16", "Float16"),
    "bfloat16": (np.uint16, "BF16", "BFloat16"),
    "int64": (np.int64, "I64", "Int64"),
    "int32": (np.int32, "I32", "Int32"),
    "int16": (np.int16, "I16", "Int16"),
    "int8": (np.int8, "I8", "Int8"),
    "uint64": (np.uint64, "U64", "UInt64"),
    "uint32": (np.uint32, "U32", "UInt32"),
    "uint16": (np.uint16, "U16", "UInt16"),
    "uint8": (np.uint8, "U8", "UInt8"),
    "bool": (np.bool_, "BOOL", "Bool"),
}
_FROM_ST = {v[1]: k for k, v in DTYPES.items()}
_FROM_CKPT = {v[2]: k for k, v in DTYPES.items()}
FLOATS = ("float64", "float32", "float16", "bfloat16")


def dtype_from_ckpt(tensor_type: str) -> str:
    """A MindSpore ckpt tensor_type ("BFloat16") as petrun's dtype name; unknown ones lowercased."""
    return _FROM_CKPT.get(tensor_type, str(tensor_type).lower())


def dtype_from_safetensors(code: str) -> str:
    """A safetensors dtype code ("BF16") as petrun's dtype name; unknown ones lowercased."""
    return _FROM_ST.get(code, str(code).lower())

# MindSpore splits tensors above 512 MiB into several Values with the same tag (protobuf
# messages must stay under 2 GiB); its loader joins them. Same here.
CKPT_SLICE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(DTYPES[self.dtype][0]).itemsize


# ---------------------------------------------------------------------------------------------
# dtype conversion (bf16 through fp32)


_CAST_CHUNK = 1 << 20   # elements per block: bounds the temporaries of a bf16 conversion


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    out = np.empty(bits.shape, np.float32)
    flat_in, flat_out = bits.reshape(-1), out.reshape(-1).view(np.uint32)
    for i in range(0, flat_in.size, _CAST_CHUNK):
        block = flat_out[i:i + _CAST_CHUNK]
        block[...] = flat_in[i:i + _CAST_CHUNK]
        block <<= 16
    return out


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch and MindSpore do; NaN stays a quiet NaN."""
    out = np.empty(x.shape, np.uint16)
    flat_in, flat_out = np.asarray(x, np.float32).reshape(-1), out.reshape(-1)
    for i in range(0, flat_in.size, _CAST_CHUNK):
        block = flat_in[i:i + _CAST_CHUNK]
        u = block.view(np.uint32) if block.flags.c_contiguous else block.copy().view(np.uint32)
        lsb = u >> 16
        lsb &= 1
        lsb += 0x7FFF
        lsb += u               # u + 0x7FFF + lsb: carries into the kept half when rounding up
        lsb >>= 16
        flat_out[i:i + _CAST_CHUNK] = lsb
        flat_out[i:i + _CAST_CHUNK][np.isnan(block)] = 0x7FC0
    return out


def cast(array: np.ndarray, src: str, dst: str | None) -> tuple[np.ndarray, str]:
    """(array, dtype) converted to `dst` (None: unchanged). Only floats change; integer and
    boolean tensors keep their type whatever `dst` says. bf16 ↔ fp16 goes through fp32."""
    if dst is None or dst == src or src not in FLOATS:
        return array, src
    wide = bf16_bits_to_f32(array) if src == "bfloat16" else array
    if dst == "bfloat16":
        return f32_to_bf16_bits(wide), dst
    return wide.astype(DTYPES[dst][0]), dst


# ---------------------------------------------------------------------------------------------
# Readers: names, (dtype, shape) and data of one tensor at a time


class TensorReader:
    """Common interface: `infos` (name → TensorInfo) and `read(name)` → numpy array."""

    infos: dict[str, TensorInfo]

    def read(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        for f in getattr(self, "_handles", {}).values():
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _read_exact(f, offset: int, nbytes: int, where: str) -> np.ndarray:
    buf = np.empty(nbytes, np.uint8)
    f.seek(offset)
    got = f.readinto(memoryview(buf))
    if got != nbytes:
        raise UserError(f"file is truncated: wanted {nbytes} bytes at offset {offset}, got {got}",
                        file=where, fix="re-download or re-save the checkpoint")
    return buf


class SafetensorsReader(TensorReader):
    """One .safetensors file, a folder with model.safetensors, or a sharded folder with
    model.safetensors.index.json (its weight_map decides which shard holds which tensor)."""

    def __init__(self, src: str | os.PathLike, key: str = "--src"):
        self.src = Path(src)
        self.infos: dict[str, TensorInfo] = {}
        self._where: dict[str, tuple[Path, int]] = {}
        self._handles: dict[Path, object] = {}
        for path in self._files(key):
            self._index(path)
        unlisted = set(getattr(self, "_weight_map", {})) - set(self.infos)
        if unlisted:
            raise UserError(f"the index lists tensors no shard holds, e.g. {sorted(unlisted)[:3]}",
                            file=str(self.src / "model.safetensors.index.json"), key=key,
                            fix="the shards and the index are from different saves; re-save")

    def _files(self, key: str) -> list[Path]:
        p = self.src
        if p.is_file():
            return [p]
        if not p.is_dir():
            raise UserError("path does not exist", file=str(p), key=key,
                            fix=f"point {key} at a Hugging Face model folder or a .safetensors "
                                "file")
        index = p / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise UserError(f"not a valid safetensors index ({e})", file=str(index), key=key,
                                fix="restore the index.json written by save_pretrained") from None
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (p / s).is_file()]
            if missing:
                raise UserError(f"the index names shard(s) that are not in the folder: "
                                f"{', '.join(missing[:4])}", file=str(index), key=key,
                                fix="copy every shard listed in the index into the folder")
            self._weight_map = {name: p / shard for name, shard in weight_map.items()}
            return [p / s for s in shards]
        single = p / "model.safetensors"
        if single.is_file():
            return [single]
        found = sorted(p.glob("*.safetensors"))
        if len(found) == 1:
            return found
        others = [f.name for f in p.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        raise UserError(
            "no model.safetensors (or model.safetensors.index.json) in this folder"
            + (f"; found {', '.join(others[:3])}" if others else ""), file=str(p), key=key,
            fix="petrun converts safetensors only: re-save the model with "
                "save_pretrained(..., safe_serialization=True)")

    def _index(self, path: Path) -> None:
        from petrun.ckpt.io import refuse_pickle
        refuse_pickle(path, "--src")
        try:
            f = open(path, "rb")
        except OSError as e:
            raise UserError(f"cannot open ({e.strerror})", file=str(path),
                            fix="check the path and its read permission") from None
        self._handles[path] = f
        head = f.read(8)
        damaged = "re-download the file or re-save it with save_pretrained(safe_serialization=True)"
        if len(head) != 8:
            raise UserError("not a safetensors file (too short)", file=str(path), fix=damaged)
        (n,) = struct.unpack("<Q", head)
        size = path.stat().st_size
        if n > min(size - 8, 100 * 1024 * 1024):
            raise UserError("not a safetensors file (bad header length), or truncated inside its "
                            "header", file=str(path), fix=damaged)
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise UserError("not a safetensors file (header is not JSON)", file=str(path),
                            fix=damaged) from None
        base = 8 + n
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            dtype = _FROM_ST.get(meta.get("dtype"))
            if dtype is None:
                raise UserError(f"tensor {name!r} has dtype {meta.get('dtype')!r}, which petrun "
                                "cannot convert", file=str(path))
            start, end = meta["data_offsets"]
            info = TensorInfo(dtype, tuple(int(d) for d in meta["shape"]))
            if end - start != info.nbytes or base + end > size:
                raise UserError(f"tensor {name!r}: data offsets do not match its shape, or the "
                                "file is truncated", file=str(path),
                                fix="re-download or re-save the checkpoint")
            wanted = getattr(self, "_weight_map", {}).get(name, path)
            if wanted != path:
                continue  # the index assigns this name to another shard
            if name in self.infos:
                raise UserError(f"tensor {name!r} appears in two files", file=str(path))
            self.infos[name] = info
            self._where[name] = (path, base + start)

    def read(self, name: str) -> np.ndarray:
        info = self.infos[name]
        path, offset = self._where[name]
        buf = _read_exact(self._handles[path], offset, info.nbytes, str(path))
        return buf.view(DTYPES[info.dtype][0]).reshape(info.shape)


def _varint(f) -> int:
    shift = result = 0
    while True:
        b = f.read(1)
        if not b:
            raise EOFError
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7


def _varint_from(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


class CkptReader(TensorReader):
    """A MindSpore .ckpt, indexed without loading it: one pass over the record headers notes
    where each tensor's bytes lie; `read` fetches one tensor. Values a tensor was sliced into
    (same tag, consecutive) are joined, as MindSpore's loader does."""

    def __init__(self, src: str | os.PathLike, key: str = "--src"):
        self.src = Path(src)
        if not self.src.is_file():
            raise UserError("checkpoint file does not exist", file=str(self.src), key=key,
                            fix=f"point {key} at a MindSpore .ckpt file")
        self.infos: dict[str, TensorInfo] = {}
        self._chunks: dict[str, list[tuple[int, int]]] = {}
        self.strings: dict[str, str] = {}
        f = open(self.src, "rb")
        self._handles = {self.src: f}
        size = self.src.stat().st_size
        f.seek(max(size - 17, 0))
        end = size - 17 if f.read(7) == b"crc_num" else size  # optional CRC trailer
        try:
            self._scan(f, end)
        except (EOFError, IndexError, KeyError, ValueError) as e:
            raise UserError(f"not a readable MindSpore checkpoint ({type(e).__name__})",
                            file=str(self.src), key=key,
                            fix="the file is truncated, encrypted or not a .ckpt") from None

    def _scan(self, f, end: int) -> None:
        f.seek(0)
        last = None
        while f.tell() < end:
            if _varint(f) != 0x0A:   # Checkpoint.value: field 1, length-delimited
                raise ValueError("unexpected field")
            length = _varint(f)
            start = f.tell()
            name, dims, dtype, content = self._value(f, start + length)
            f.seek(start + length)
            if dtype == "str":
                self.strings[name] = f"<str {content[1]} bytes>"
                continue
            if name == last:
                self._chunks[name].append(content)
            elif name in self._chunks:
                raise ValueError(f"tag {name!r} repeated")
            else:
                self._chunks[name] = [content]
                self.infos[name] = TensorInfo(_FROM_CKPT[dtype], tuple(dims))
            last = name
        for name, info in self.infos.items():
            if sum(n for _, n in self._chunks[name]) != info.nbytes:
                raise ValueError(f"size of {name!r}")

    @staticmethod
    def _value(f, stop: int):
        """Parse one Checkpoint.Value up to the tensor bytes, which are only located."""
        name, dims, dtype, content = None, [], None, (0, 0)
        while f.tell() < stop:
            key = _varint(f)
            field, wire = key >> 3, key & 7
            if wire != 2:
                raise ValueError("unexpected wire type")
            n = _varint(f)
            if field == 1:
                name = f.read(n).decode("utf-8")
            elif field == 2:   # TensorProto
                tstop = f.tell() + n
                while f.tell() < tstop:
                    tkey = _varint(f)
                    tfield, twire = tkey >> 3, tkey & 7
                    if tfield == 1 and twire == 0:
                        dims.append(_varint(f))
                    elif tfield == 1 and twire == 2:   # packed dims
                        packed, pos = f.read(_varint(f)), 0
                        while pos < len(packed):
                            d, pos = _varint_from(packed, pos)
                            dims.append(d)
                    elif tfield == 2 and twire == 2:
                        dtype = f.read(_varint(f)).decode("ascii")
                    elif tfield == 3 and twire == 2:
                        m = _varint(f)
                        content = (f.tell(), m)
                        f.seek(m, 1)
                    else:
                        raise ValueError("unexpected tensor field")
            else:   # field 3 = MapTensor (embedding hash tables): not model weights
                raise ValueError("map tensors are not supported")
        if name is None or dtype is None:
            raise ValueError("incomplete value")
        if dims == [0] and dtype != "str" and content[1] > 0:
            dims = []   # MindSpore's loader reads dims [0] with data as a scalar
        return name, dims, dtype, content

    def read(self, name: str) -> np.ndarray:
        info = self.infos[name]
        f = self._handles[self.src]
        parts = [_read_exact(f, off, n, str(self.src)) for off, n in self._chunks[name]]
        buf = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return buf.view(DTYPES[info.dtype][0]).reshape(info.shape)


# ---------------------------------------------------------------------------------------------
# Writers: atomic (temporary name, fsync, rename), one tensor at a time


class AtomicFile:
    """A file written under a temporary name and renamed into place by commit()."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        self.f = open(self.tmp, "wb")

    def commit(self) -> Path:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        fd = os.open(str(self.path.parent), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return self.path

    def abort(self) -> None:
        self.f.close()
        if self.tmp.exists():
            self.tmp.unlink()


def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _enc_varint((number << 3) | 2) + _enc_varint(len(payload)) + payload


class CkptWriter:
    """Writes a MindSpore .ckpt record by record, byte-compatible with mindspore.save_checkpoint
    (same proto, same field order, dims unpacked, large tensors sliced at 512 MiB). Each tensor's
    bytes go from its numpy buffer straight to the file: no serialized copy is ever built."""

    def __init__(self, path: str | os.PathLike):
        self._file = AtomicFile(path)
        self.path = self._file.path

    def write(self, name: str, array: np.ndarray, dtype: str) -> None:
        array = np.require(array, requirements="C")   # keeps 0-d arrays 0-d
        if array.dtype != np.dtype(DTYPES[dtype][0]):
            raise ValueError(f"{name}: array dtype {array.dtype} does not store {dtype}")
        data = memoryview(array.reshape(-1)).cast("B")
        dims = b"".join(_enc_varint((1 << 3) | 0) + _enc_varint(d) for d in array.shape)
        type_field = _field(2, DTYPES[dtype][2].encode("ascii"))
        tag = _field(1, name.encode("utf-8"))
        step = CKPT_SLICE_BYTES - CKPT_SLICE_BYTES % max(array.itemsize, 1)
        for start in range(0, max(len(data), 1), step):
            chunk = data[start:start + step]
            content_head = _enc_varint((3 << 3) | 2) + _enc_varint(len(chunk))
            tensor_len = len(dims) + len(type_field) + len(content_head) + len(chunk)
            tensor_head = _enc_varint((2 << 3) | 2) + _enc_varint(tensor_len)
            value_len = len(tag) + len(tensor_head) + tensor_len
            self._file.f.write(_enc_varint((1 << 3) | 2) + _enc_varint(value_len) + tag
                               + tensor_head + dims + type_field + content_head)
            self._file.f.write(chunk)

    def commit(self) -> Path:
        return self._file.commit()

    def abort(self) -> None:
        self._file.abort()


class SafetensorsWriter:
    """Writes a safetensors file whose layout is fixed up front from (name, TensorInfo) pairs;
    `write` must then be called once per tensor in that order."""

    def __init__(self, path: str | os.PathLike, layout: Iterable[tuple[str, TensorInfo]],
                 metadata: dict[str, str] | None = None):
        self._layout = list(layout)
        header: dict = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        for name, info in self._layout:
            header[name] = {"dtype": DTYPES[info.dtype][1], "shape": list(info.shape),
                            "data_offsets": [offset, offset + info.nbytes]}
            offset += info.nbytes
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)   # the data section starts 8-byte aligned
        self._file = AtomicFile(path)
        self.path = self._file.path
        self._file.f.write(struct.pack("<Q", len(text)) + text)
        self._next = 0

    def write(self, name: str, array: np.ndarray, dtype: str) -> None:
        want_name, info = self._layout[self._next]
        if name != want_name or dtype != info.dtype or tuple(array.shape) != info.shape:
            raise ValueError(f"expected {want_name} {info}, got {name} {dtype} {array.shape}")
        array = np.require(array, requirements="C")
        self._file.f.write(memoryview(array.reshape(-1)).cast("B"))
        self._next += 1

    def commit(self) -> Path:
        if self._next != len(self._layout):
            raise ValueError(f"only {self._next} of {len(self._layout)} tensors were written")
        return self._file.commit()

    def abort(self) -> None:
        self._file.abort()
