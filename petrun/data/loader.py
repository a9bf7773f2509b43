"""Tokenized datasets → a mindspore.dataset pipeline of int32 batches [batch, seq_length + 1].

`dataset_dir` follows MindFormers' MindDataset loader (reference/mindformers.md §1.4): a MindRecord
file (a single path also brings in the other shards of its set, e.g. `x.mindrecord0..3`), or a
directory walked recursively for files named `*mindrecord` / `*mindrecordN` (`.db` index files
skipped). petrun also reads record sources (petrun/data/records.py: JSON, JSON lines, Parquet,
Arrow, a Hugging Face save_to_disk folder) whose records carry integer lists `input_ids` and
`labels` (the demo data is shipped that way), and raw alpaca / ShareGPT / messages / AdvertiseGen
records when given `raw` (a RawText: the tokenizer to use), tokenized once into a cache
(petrun/data/ondemand.py).

Every problem a user can cause is raised as a UserError naming the file, the config key and a fix,
before MindSpore gets the chance to fail with a shape error deep inside the first step.

The order of samples is petrun's, not a MindSpore sampler's: `epoch_order` makes each epoch's
(shuffled, sharded) order a function of (seed, epoch), and a pipeline is built per epoch, so a
resumed run reproduces the epoch it stopped in and skips its consumed batches without reading them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from petrun.data import mindrecord as mr
from petrun.data import records as rec_io
from petrun.data import wikitext
from petrun.errors import UserError

DATASET_DIR_KEY = "train_dataset.data_loader.dataset_dir"
JSON_SUFFIXES = rec_io.JSON_SUFFIXES + rec_io.TABLE_SUFFIXES   # every record file the reader takes
_INT_TYPES = {"int32", "int64"}
_FORMATS_FIX = ("dataset_dir may be a .mindrecord file, a directory containing MindRecord files, "
                "a tokenized .json/.jsonl/.parquet/.arrow file or save_to_disk folder with "
                "input_ids/labels, raw alpaca/ShareGPT/messages/AdvertiseGen records in any of "
                "those, or raw wikitext (a wiki.*.tokens file or the folder holding it)")


@dataclass
class _Source:
    fmt: str                 # "mindrecord", "json" (any record source records.py reads),
                             # "wikitext", or "arrays" (raw records tokenized on the fly)
    path: str                # what the user gave (for messages)
    files: list[str]         # the data files that will be read
    reader_arg: Any = None   # MindDataset's dataset_files (str loads a whole shard set); arrays
    info: dict | None = None  # "arrays": inspect_dataset's answer, known from the arrays
    split: str | None = None  # the split of a DatasetDict folder (<section>.split)


def _resolve(dataset_dir: str | os.PathLike, key: str) -> _Source:
    path = os.path.expanduser(os.fspath(dataset_dir))
    if not os.path.exists(path):
        raise UserError("dataset path does not exist", file=path, key=key,
                        fix=f"check the path. {_FORMATS_FIX}")
    if os.path.isdir(path):
        files = mr.find_mindrecord_files(path)
        if not files and rec_io.is_table(path):   # a Hugging Face save_to_disk folder
            return _Source("json", path, [path])
        text = None if files else wikitext.tokens_file(path, split="valid" if key.startswith(
            "eval_dataset") else "train")
        if text is not None:
            return _Source("wikitext", path, [text])
        if not files:
            jsons = sorted(f for f in os.listdir(path) if f.endswith(JSON_SUFFIXES)
                           and f not in ("dataset_info.json", "state.json", "dataset_dict.json"))
            hint = (f" It holds {', '.join(jsons[:3])}: point dataset_dir at that file itself."
                    if jsons else "")
            raise UserError("no MindRecord files (named *mindrecord or *mindrecordN) in this "
                            "directory", file=path, key=key, fix=f"{_FORMATS_FIX}.{hint}")
        return _Source("mindrecord", path, files, files)
    if path.endswith(".db") and mr.is_mindrecord_name(path[:-3]):
        raise UserError("this is a MindRecord index file", file=path, key=key,
                        fix=f"point dataset_dir at the data file {os.path.basename(path[:-3])} "
                            f"or at its directory")
    if mr.is_mindrecord_name(path):
        # A single path stands for its whole shard set (x.mindrecord0 brings in x.mindrecord1...).
        return _Source("mindrecord", path, mr.shard_set(path), path)
    if path.endswith(JSON_SUFFIXES):
        return _Source("json", path, [path])
    if path.endswith(wikitext.SUFFIXES):
        return _Source("wikitext", path, [path])
    raise UserError("unrecognised dataset file type", file=path, key=key,
                    fix=f"{_FORMATS_FIX}. Raw alpaca data must be tokenized first.")


# --------------------------------------------------------------------------- JSON

def _json_records(path: str, key: str, first_only: bool = False,
                  split: str | None = None) -> tuple[list[Any], int]:
    """(records, count) through the one record reader; with first_only just the first record.
    Tokenized data must be whole: an unreadable line stops with its place."""
    if first_only:
        first, count = rec_io.peek(path, key=key, split=split)
        return ([first] if first is not None else []), count
    records, bad = rec_io.read_records(path, key=key, split=split)
    if bad:
        why = bad[0].reason.removeprefix("invalid JSON ")
        raise UserError(f"{bad[0].where} is not valid JSON {why}", file=path, key=key,
                        fix="write one JSON object per line, or one JSON list of objects")
    return [r.obj for r in records], len(records)


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                           for v in value)


def _json_columns(record: Any) -> list[str]:
    if not isinstance(record, dict):
        return []
    return [k for k, v in record.items() if _is_int_list(v)]


def _json_arrays(records: list[Any], columns: Sequence[str], length: int, path: str,
                 key: str) -> dict[str, np.ndarray]:
    """Validate every record and stack the requested columns as int32 [n, length]."""
    out = {c: np.empty((len(records), length), dtype=np.int32) for c in columns}
    for i, rec in enumerate(records):
        where = f"record {i}"
        if not isinstance(rec, dict):
            raise UserError(f"{where} is not a JSON object", file=path, key=key,
                            fix="every record must look like {\"input_ids\": [...], "
                                "\"labels\": [...]}")
        for c in columns:
            src = c if c in rec or c != "labels" else "input_ids"   # labels default: input_ids
            value = rec.get(src)
            if not _is_int_list(value):
                raise UserError(f"{where}: '{src}' is missing or not a list of integers",
                                file=path, key=key,
                                fix="every record must carry the same integer-list columns")
            if len(value) != length:
                raise UserError(f"{where}: '{src}' has {len(value)} tokens, the first record "
                                f"has {length}", file=path, key=key,
                                fix="all samples must be padded to the same length "
                                    "(seq_length + 1); re-create the file")
            arr = np.asarray(value, dtype=np.int64)
            if arr.size and (arr.min() < -(2 ** 31) or arr.max() >= 2 ** 31):
                raise UserError(f"{where}: '{src}' has values outside int32", file=path, key=key,
                                fix="token ids must fit in int32")
            out[c][i] = arr
    return out


# --------------------------------------------------------------------------- raw JSON

_WARNED_BAD: set = set()


def _tokenize_raw(src: _Source, raw, seq_length: int, extra_tokens: int, key: str) -> _Source:
    """A raw-text source (JSON records or wikitext) tokenized (or found in the cache) as
    arrays; others unchanged."""
    from petrun.data import ondemand

    if src.fmt == "wikitext":
        if not extra_tokens:
            raise UserError("raw wikitext gives unlabelled blocks for models that shift labels "
                            "themselves (Llama2, GPT-2); ChatGLM2 trains on pre-shifted labels",
                            file=src.path, key=key,
                            fix="give ChatGLM2 AdvertiseGen or alpaca JSON")
        fmt, path = "wikitext", src.files[0]
    else:
        try:
            first = _json_records(src.path, key, first_only=True, split=raw.split)[0][:1]
        except UserError:   # a bad line in raw JSON lines is skipped and reported, not fatal
            first = [r.obj for r in rec_io.read_records(src.path, key=key,
                                                         split=raw.split)[0][:1]]
        fmt, path = ondemand.raw_format(first[0] if first else None, raw.columns), src.path
    if fmt is None:
        return src
    arrays, meta = ondemand.tokenized(path, fmt, raw, seq_length=seq_length,
                                      extra_tokens=extra_tokens, key=key)
    # skipped, but never silently (the recipe may not print info["raw"]); once per process, as
    # pre-flight and the recipe open the same file
    if meta["bad"] and (src.path, meta.get("cache")) not in _WARNED_BAD:
        _WARNED_BAD.add((src.path, meta.get("cache")))
        import logging
        logging.getLogger("petrun").warning(
            "%s: skipped %d bad record(s) of %d: %s", src.path, meta["bad"], meta["records"],
            meta["bad_preview"])
    cols = list(arrays)
    info = {"format": f"{fmt} records (tokenized on the fly)", "columns": cols,
            "sample_length": int(arrays[cols[0]].shape[1]),
            "num_samples": int(arrays[cols[0]].shape[0]), "files": [path],
            "types": {c: "int32" for c in cols}, "raw": meta}
    template = raw.template_for(fmt)   # what the samples were rendered with (None: no chat)
    if template:
        info["template"] = template
    return _Source("arrays", src.path, [path], arrays, info)


# --------------------------------------------------------------------------- inspection

def _mindrecord_info(src: _Source, key: str) -> dict[str, Any]:
    try:
        schema = mr.read_schema(src.reader_arg)
        num = mr.count_samples(src.reader_arg)
        first = mr.read_first(src.reader_arg) if num else None
    except RuntimeError as exc:
        msg = str(exc).split("Dataset Pipeline Error Message:")[-1].strip(" -\n")
        raise UserError(f"cannot read the MindRecord data: {msg.splitlines()[0] if msg else exc}",
                        file=src.path, key=key,
                        fix="re-create the MindRecord file(s); the data file and its .db index "
                            "must sit side by side under the names they were written with") \
            from None
    length = None
    if first is not None and "input_ids" in first:
        length = int(np.asarray(first["input_ids"]).size)
    return {"format": "mindrecord", "columns": list(schema), "sample_length": length,
            "num_samples": num, "files": list(src.files),
            "types": {c: str(s.get("type")) for c, s in schema.items()}}


def _json_info(src: _Source, key: str, first_only: bool) -> tuple[dict[str, Any], list[Any]]:
    records, num = _json_records(src.path, key, first_only=first_only, split=src.split)
    first = records[0] if records else None
    columns = _json_columns(first)
    length = len(first["input_ids"]) if "input_ids" in columns else None
    info = {"format": "json", "columns": columns, "sample_length": length,
            "keys": sorted(first) if isinstance(first, dict) else [],
            "num_samples": num, "files": list(src.files),
            "types": {c: "int64" for c in columns}}
    from petrun.data.ondemand import raw_format
    if not columns and raw_format(first):
        info["raw_text"] = raw_format(first)
    return info, records


def inspect_dataset(dataset_dir: str | os.PathLike, *, key: str = DATASET_DIR_KEY) -> dict:
    """Columns, first-sample length, sample count and files, reading only headers/first record.

    Returns dict(format, columns, sample_length, num_samples, files, types). Raises UserError if
    the path is missing or unreadable; it does not judge the content (see check_dataset).
    """
    src = _resolve(dataset_dir, key)
    if src.fmt == "mindrecord":
        return _mindrecord_info(src, key)
    if src.fmt == "wikitext":
        raise _untokenized_wikitext(src, key)
    return _json_info(src, key, first_only=True)[0]


def _untokenized_wikitext(src: _Source, key: str, seq_length: int | str = "N") -> UserError:
    return UserError("this is raw wikitext, not tokenized data", file=src.files[0], key=key,
                     fix=f"tokenize it first: petrun data prepare wikitext -i {src.files[0]} "
                         f"-o wiki.mindrecord -t TOKENIZER --seq-length {seq_length} (or give a "
                         "config whose processor.tokenizer petrun can tokenize it with)")


def dataset_size(dataset_dir: str | os.PathLike, *, batch_size: int | None = None,
                 num_shards: int = 1, drop_remainder: bool = True,
                 key: str = DATASET_DIR_KEY) -> int:
    """Samples in the dataset; with batch_size, the batches one shard yields per epoch.

    MindSpore gives every shard ceil(n / num_shards) samples (short shards wrap around).
    """
    n = inspect_dataset(dataset_dir, key=key)["num_samples"]
    if batch_size is None:
        return n
    per_shard = math.ceil(n / num_shards)
    return per_shard // batch_size if drop_remainder else math.ceil(per_shard / batch_size)


def check_dataset(dataset_dir: str | os.PathLike, *, seq_length: int, batch_size: int = 1,
                  extra_tokens: int = 1,
                  columns: Sequence[str] = mr.DEFAULT_COLUMNS, num_shards: int = 1,
                  drop_remainder: bool = True, key: str = DATASET_DIR_KEY, raw=None,
                  vocab_size: int | None = None) -> dict:
    """inspect_dataset plus every check build_dataset makes; raises UserError, returns the info.

    With `raw` (ondemand.RawText), raw JSON is tokenized (or taken from the cache) to be checked.
    """
    src = _resolve(dataset_dir, key)
    src.split = getattr(raw, "split", None)
    if raw is not None and src.fmt in ("json", "wikitext"):
        src = _tokenize_raw(src, raw, seq_length, extra_tokens, key)
    return _check(src, seq_length=seq_length, batch_size=batch_size,
                  extra_tokens=extra_tokens,
                  columns=columns, num_shards=num_shards, drop_remainder=drop_remainder,
                  key=key, first_only=True, vocab_size=vocab_size)[0]


def _check(src: _Source, *, seq_length: int, batch_size: int, columns: Sequence[str],
           extra_tokens: int,
           num_shards: int, drop_remainder: bool, key: str,
           first_only: bool, vocab_size: int | None = None) -> tuple[dict, list[Any]]:
    if src.fmt == "wikitext":
        raise _untokenized_wikitext(src, key, seq_length)
    if src.fmt == "mindrecord":
        info, records = _mindrecord_info(src, key), []
    elif src.fmt == "arrays":
        info, records = src.info, []
    else:
        info, records = _json_info(src, key, first_only=first_only)
    where = src.path
    if info["num_samples"] == 0:
        raise UserError("the dataset has no samples", file=where, key=key,
                        fix="re-create it from non-empty data")
    if info.get("raw_text"):
        raise UserError(f"the records are raw text ({info['raw_text']}), not tokenized",
                        file=where, key=key,
                        fix=f"tokenize them first: petrun data prepare {info['raw_text']} "
                            f"--input {where} "
                            f"--output data.mindrecord --seq-length {seq_length} --tokenizer "
                            f"tokenizer.model (or MindFormers' llama_preprocess.py)")
    found = info["columns"]
    # A dataset without labels (e.g. wikitext chunks) trains on input_ids shifted by the model.
    missing = [c for c in columns
               if c not in found and not (c == "labels" and "input_ids" in found)]
    if missing and not found and info.get("keys"):
        raise UserError(f"the records have keys {info['keys']}: neither token-id columns "
                        f"({list(columns)}) nor a raw format petrun tokenizes (alpaca "
                        "instruction/input/output, ShareGPT conversations, OpenAI messages, "
                        "AdvertiseGen content/summary)",
                        file=where, key=key,
                        fix="if the file spells those fields differently, map them with "
                            "train_dataset.columns (e.g. {messages: chats, role: speaker}); "
                            "else convert the records, or tokenize them into input_ids/labels")
    if missing:
        raise UserError(f"column(s) {missing} not in the dataset, which has {found}",
                        file=where, key=key,
                        fix="set train_dataset.input_columns to columns the data has (llama: "
                            "['input_ids', 'labels']), or re-create the data with them")
    bad_types = {c: info["types"][c] for c in columns if c in info["types"]
                 and info["types"][c] not in _INT_TYPES}
    if bad_types:
        raise UserError(f"column types {bad_types} are not integer token ids", file=where,
                        key=key, fix="re-create the data with int32 input_ids/labels")
    expected = seq_length + extra_tokens
    if info["sample_length"] != expected:
        plus = f" (seq_length + {extra_tokens})" if extra_tokens else ""
        raise UserError(
            f"samples have {info['sample_length']} tokens but the model's seq_length "
            f"{seq_length} needs {expected}{plus}", file=where, key=key,
            fix=f"prepare the data with the model's seq_length ({seq_length}"
                + ("; the preprocessing adds the +1 itself" if extra_tokens else "")
                + f"), or set model.model_config.seq_length to "
                f"{(info['sample_length'] or 1) - extra_tokens} to match the data")
    per_shard = math.ceil(info["num_samples"] / num_shards)
    if drop_remainder and per_shard < batch_size:
        shards = f" per shard ({num_shards} shards)" if num_shards > 1 else ""
        raise UserError(f"only {per_shard} sample(s){shards}, fewer than one batch of "
                        f"{batch_size}; with drop_remainder nothing would be trained",
                        file=where, key=key,
                        fix=f"lower batch_size to at most {per_shard}, or use more data")
    if src.fmt == "arrays":
        check_token_ids({c: src.reader_arg[c] for c in columns if c in src.reader_arg},
                        vocab_size, where, key)
    elif src.fmt == "json":
        check_token_ids({c: np.concatenate([np.asarray(r[c]).ravel() for r in records]
                                           or [np.zeros(0)])
                         for c in columns if records and isinstance(records[0], dict)
                         and c in records[0]}, vocab_size, where, key)
    # MindRecord: token ids are checked batch by batch (DataSource.check_batch); that every page
    # can be read at all is checked once per file version, in a child process (a damaged page
    # crashes MindSpore's reader).
    if src.fmt == "mindrecord":
        from petrun.data.integrity import verify_mindrecord
        verify_mindrecord(info["files"], key)
    return info, records


def check_token_ids(columns: Mapping[str, np.ndarray], vocab_size: int | None, where: str,
                    key: str, at: str = "") -> None:
    """Every id (labels' negative ignore marks aside) is a row of the embedding table: outside
    it the lookup fails on CPU after the compile, and silently reads garbage on Ascend."""
    if not vocab_size:
        return
    for name, ids in columns.items():
        ids = np.asarray(ids)
        if name == "labels":
            ids = ids[ids >= 0]
        top = int(ids.max()) if ids.size else -1
        if top >= vocab_size:
            raise UserError(f"{name}{at} holds token id {top}, outside the model's vocabulary "
                            f"of {vocab_size} (ids 0..{vocab_size - 1})", file=where, key=key,
                            fix="tokenize the data with the model's tokenizer "
                                "(processor.tokenizer.vocab_file); if the data is right, "
                                "model.model_config.vocab_size is too small for it")


# --------------------------------------------------------------------------- order and pipeline

def epoch_order(num_samples: int, epoch: int, *, seed: int = 0, shuffle: bool = False,
                num_shards: int = 1, shard_id: int = 0) -> np.ndarray:
    """The sample indices shard `shard_id` reads in `epoch` (1-based), in order.

    A function of (seed, epoch) alone, so a resumed run rebuilds the exact order of the epoch it
    stops in: the permutation comes from PCG64 seeded with [seed, epoch] (the same on every rank),
    and shard r takes every num_shards-th sample starting at r. As with MindSpore's
    DistributedSampler, every shard gets ceil(n / num_shards) samples, the last ones wrapping
    around to the start.
    """
    order = np.arange(num_samples, dtype=np.int64)
    if shuffle:
        rng = np.random.Generator(np.random.PCG64([int(seed) % 2 ** 63, int(epoch)]))
        order = rng.permutation(num_samples)
    per_shard = math.ceil(num_samples / num_shards)
    return np.resize(order, per_shard * num_shards)[shard_id::num_shards]


class _NoBatches:
    """What epoch() returns once every batch of the epoch has been consumed."""

    def create_tuple_iterator(self, *args, **kwargs):
        return iter(())

    def get_dataset_size(self) -> int:
        return 0


class _NumpyBatches:
    """Prepared numpy batches behind the create_tuple_iterator the recipe uses."""

    def __init__(self, batches: list[tuple]):
        self.batches = batches

    def create_tuple_iterator(self, *args, **kwargs):
        from mindspore import Tensor
        return (tuple(Tensor(a) for a in b) for b in self.batches)

    def get_dataset_size(self) -> int:
        return len(self.batches)


class DataSource:
    """A validated dataset and its batching: one mindspore.dataset pipeline per epoch.

    `epoch(e, skip_batches=k)` starts epoch e after its first k batches without reading them,
    which is how a resumed run continues mid-epoch with no sample repeated or skipped.
    """

    def __init__(self, src: _Source, info: dict, records: list[Any], *, columns: list[str],
                 seq_length: int, extra_tokens: int, batch_size: int, shuffle: bool, seed: int,
                 num_shards: int, shard_id: int, drop_remainder: bool,
                 num_parallel_workers: int | None, key: str, packing: bool = False,
                 bucketing: bool = False, bucket_multiple: int | None = None,
                 pad_id: int | None = None, vocab_size: int | None = None):
        self.src, self.info = src, info
        self.key = key
        self.columns = columns
        self.batch_size = batch_size
        self.shuffle, self.seed = shuffle, int(seed)
        self.num_shards, self.shard_id = num_shards, shard_id
        self.drop_remainder = drop_remainder
        self.num_parallel_workers = num_parallel_workers
        self.num_samples = int(info["num_samples"])
        self.files = list(src.files)
        self.sample_length = seq_length + extra_tokens
        self.extra_tokens = extra_tokens
        self._arrays = (_json_arrays(records, columns, seq_length + extra_tokens, src.path, key)
                        if src.fmt == "json" else None)
        if src.fmt == "arrays":   # a labels-less column set trains on input_ids, as MindRecord
            self._arrays = {c: src.reader_arg.get(c, src.reader_arg["input_ids"]) for c in columns}
        self.packed = None
        self.bucketing = bool(bucketing) and not packing
        self.pad_id = pad_id
        if packing or self.bucketing:
            from petrun.data.packing import pack, real_length
            arrays = self._arrays if self._arrays is not None else self._read_all()
            # read whole now, so checked whole now rather than batch by batch
            check_token_ids({c: arrays[c] for c in ("input_ids", "labels")}, vocab_size,
                            src.path, key)
            if packing:
                self.packed = pack(arrays["input_ids"], arrays["labels"], pad_id=pad_id,
                                   shift_in_model=extra_tokens == 1)
                self._arrays = {"input_ids": self.packed.input_ids, "labels": self.packed.labels,
                                "position_ids": self.packed.position_ids,
                                "segment_ids": self.packed.segment_ids}
                self.columns = list(self._arrays)
                self.num_samples = self.packed.rows
            else:
                self._arrays = arrays
                self.lengths = [real_length(arrays["input_ids"][i], arrays["labels"][i], pad_id)
                                for i in range(self.num_samples)]
                self.bucket_multiple = int(bucket_multiple or max(64, seq_length // 8))
        # MindRecord streamed batch by batch: check_batch looks at each one before its step.
        self.vocab_to_check = vocab_size if self._arrays is None else None
        if self.bucketing:   # whole batches are dealt to ranks: every rank gets the same count
            self.batches_per_epoch = (self.num_samples // batch_size) // num_shards
        else:
            per_shard = math.ceil(self.num_samples / num_shards)
            self.batches_per_epoch = (per_shard // batch_size if drop_remainder
                                      else math.ceil(per_shard / batch_size))

    def _read_all(self) -> dict[str, np.ndarray]:
        """Every sample of a MindRecord source as int32 arrays (packing and bucketing need the
        lengths of all samples up front)."""
        import mindspore.dataset as ds
        read = [c for c in ("input_ids", "labels") if c in self.info["columns"]]
        data = ds.MindDataset(self.src.reader_arg, columns_list=read, shuffle=False)
        rows = {c: [] for c in read}
        for item in data.create_dict_iterator(num_epochs=1, output_numpy=True):
            for c in read:
                rows[c].append(np.asarray(item[c], np.int32))
        out = {c: np.stack(v) for c, v in rows.items()}
        out.setdefault("labels", out["input_ids"].copy())
        return out

    def check_batch(self, batch, at: str) -> None:
        """Token ids of one streamed batch (input_ids, labels first) against the vocabulary."""
        if self.vocab_to_check:
            check_token_ids({c: np.asarray(b.asnumpy() if hasattr(b, "asnumpy") else b)
                             for c, b in zip(("input_ids", "labels"), batch)},
                            self.vocab_to_check, self.src.path, self.key,
                            at=f" ({at})")

    def order(self, epoch: int) -> np.ndarray:
        return epoch_order(self.num_samples, epoch, seed=self.seed, shuffle=self.shuffle,
                           num_shards=self.num_shards, shard_id=self.shard_id)

    def bucketed_batches(self, epoch: int) -> list[np.ndarray]:
        """This shard's batches (sample indices) of `epoch` under bucketing; a function of
        (seed, epoch) like epoch_order, so resume cursors count these batches."""
        from petrun.data.packing import bucket_order
        rng = np.random.Generator(np.random.PCG64([self.seed % 2 ** 63, int(epoch)]))
        order = bucket_order(self.lengths, self.batch_size, rng)
        full = len(order) // self.batch_size
        batches = [order[b * self.batch_size:(b + 1) * self.batch_size] for b in range(full)]
        return batches[self.shard_id::self.num_shards][:self.batches_per_epoch]

    def _bucketed(self, epoch: int, skip_batches: int):
        batches = self.bucketed_batches(epoch)[skip_batches:]
        m = self.bucket_multiple
        out = []
        for idx in batches:
            longest = max(self.lengths[i] for i in idx)
            # model inputs (width - extra_tokens) are a multiple of m: few shapes to compile
            e = self.extra_tokens
            width = min(self.sample_length, -(-max(longest - e, 1) // m) * m + e)
            out.append(tuple(self._arrays[c][idx, :width] for c in self.columns))
        return _NumpyBatches(out)

    def epoch(self, epoch: int = 1, skip_batches: int = 0):
        """Batches [batch_size, seq_length + extra_tokens] of `epoch`, after its first skip_batches
        (under bucketing, each batch trimmed to its longest sample, rounded up to a bucket)."""
        import mindspore as ms
        import mindspore.dataset as ds
        from mindspore.dataset.transforms import Duplicate, TypeCast

        if self.bucketing:
            return self._bucketed(epoch, skip_batches)
        indices = self.order(epoch)[skip_batches * self.batch_size:]
        if len(indices) == 0 or (self.drop_remainder and len(indices) < self.batch_size):
            return _NoBatches()   # MindSpore refuses an empty source; the epoch is used up
        columns = self.columns
        if self._arrays is not None:
            data = ds.NumpySlicesDataset({c: self._arrays[c][indices] for c in columns},
                                         column_names=columns, shuffle=False)
        else:
            info = self.info
            read = [c for c in columns if c in info["columns"]]
            copy_labels = "labels" in columns and "labels" not in read
            if copy_labels and "input_ids" not in read:
                read.append("input_ids")
            data = ds.MindDataset(self.src.reader_arg, columns_list=read,
                                  sampler=ds.SubsetSampler(indices.tolist()),
                                  num_parallel_workers=self.num_parallel_workers)
            if copy_labels:
                data = data.map(operations=Duplicate(), input_columns=["input_ids"],
                                output_columns=["input_ids", "labels"])
            for c in columns:
                stored = info["types"].get(c, info["types"].get("input_ids"))
                if stored != "int32":   # MindFormers casts every column to int32 as well
                    data = data.map(operations=TypeCast(ms.int32), input_columns=[c])
            data = data.project(columns)
        return data.batch(self.batch_size, drop_remainder=self.drop_remainder)


def open_dataset(dataset_dir: str | os.PathLike, *, seq_length: int, batch_size: int,
                 extra_tokens: int = 1,
                 columns: Sequence[str] = mr.DEFAULT_COLUMNS, shuffle: bool = False,
                 seed: int = 0, num_shards: int = 1, shard_id: int = 0,
                 drop_remainder: bool = True, num_parallel_workers: int | None = None,
                 key: str = DATASET_DIR_KEY, raw=None, packing: bool = False,
                 bucketing: bool = False, bucket_multiple: int | None = None,
                 pad_id: int | None = None, vocab_size: int | None = None) -> DataSource:
    """Check the dataset once (UserError on anything a user can get wrong) and return its DataSource.

    raw: an ondemand.RawText (tokenizer + cache) lets dataset_dir be raw alpaca/AdvertiseGen JSON;
    without it such data is refused with the command that prepares it.

    extra_tokens is 1 for families that shift labels inside the model (Llama2, GPT2: samples are
    seq_length + 1 long) and 0 for GLM2, whose data carries labels already shifted.
    Sharding: sample i of an epoch's order goes to shard i % num_shards (MindSpore's interleave).
    """
    columns = list(columns)
    if batch_size < 1 or seq_length < 1:
        raise ValueError(f"batch_size and seq_length must be positive ({batch_size}, {seq_length})")
    if not (num_shards >= 1 and 0 <= shard_id < num_shards):
        raise ValueError(f"shard_id {shard_id} is not in [0, num_shards={num_shards})")
    if not columns or len(set(columns)) != len(columns):
        raise ValueError(f"columns must be distinct and non-empty, got {columns}")
    src = _resolve(dataset_dir, key)
    src.split = getattr(raw, "split", None)
    if raw is not None and src.fmt in ("json", "wikitext"):
        src = _tokenize_raw(src, raw, seq_length, extra_tokens, key)
    info, records = _check(src, seq_length=seq_length, batch_size=batch_size, columns=columns,
                           extra_tokens=extra_tokens,
                           num_shards=num_shards, drop_remainder=drop_remainder, key=key,
                           first_only=False, vocab_size=vocab_size)
    return DataSource(src, info, records, columns=columns, seq_length=seq_length,
                      extra_tokens=extra_tokens, batch_size=batch_size, shuffle=shuffle, seed=seed,
                      num_shards=num_shards, shard_id=shard_id, drop_remainder=drop_remainder,
                      num_parallel_workers=num_parallel_workers, key=key, packing=packing,
                      bucketing=bucketing, bucket_multiple=bucket_multiple, pad_id=pad_id,
                      vocab_size=vocab_size)


def build_dataset(dataset_dir: str | os.PathLike, *, seq_length: int, batch_size: int,
                  extra_tokens: int = 1,
                  columns: Sequence[str] = mr.DEFAULT_COLUMNS, shuffle: bool = False,
                  seed: int = 0, num_shards: int = 1, shard_id: int = 0,
                  drop_remainder: bool = True, num_parallel_workers: int | None = None,
                  epoch: int = 1, skip_batches: int = 0, key: str = DATASET_DIR_KEY, raw=None):
    """One epoch's mindspore.dataset pipeline of int32 batches [batch_size, seq_length + extra_tokens].

    Shorthand for open_dataset(...).epoch(epoch, skip_batches); see epoch_order for the order.
    Iterating the returned pipeline again repeats the same epoch: ask for epoch 2 to get the
    next shuffle.
    """
    return open_dataset(dataset_dir, seq_length=seq_length, batch_size=batch_size,
                        extra_tokens=extra_tokens, columns=columns, shuffle=shuffle, seed=seed,
                        num_shards=num_shards, shard_id=shard_id, drop_remainder=drop_remainder,
                        num_parallel_workers=num_parallel_workers, key=key, raw=raw
                        ).epoch(epoch, skip_batches)
