"""`petrun data prepare`: raw data → tokenized samples → MindRecord (or JSON lines), atomically.

Formats: alpaca, sharegpt and messages (records → turns in formats.py, rendered with the chat
template of templates.py and encoded by conversation.py), advertisegen (advertisegen.py), wikitext
(wikitext.py). Inputs are anything petrun.data.records reads (JSON, JSON lines, Parquet, Arrow, a
save_to_disk folder). Records are tokenized in chunks, in worker processes when workers > 1 (spawned, not
forked: the parent may already hold MindSpore's threads), and streamed in input order into the
writer, so memory holds a few chunks, never the dataset. A bad record is skipped and reported with
its line; it never stops the run and never vanishes silently.
"""
from __future__ import annotations

import errno
import itertools
import math
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from petrun.data import advertisegen, conversation, formats, wikitext
from petrun.data import mindrecord as mr
from petrun.data.conversation import IGNORE_TOKEN_ID
from petrun.data.templates import TemplateError, check_template
from petrun.data.records import BadRecord, Record, read_records, read_text
from petrun.data.tokenizer import load_tokenizer
from petrun.errors import UserError

FORMATS = ("alpaca", "sharegpt", "messages", "advertisegen", "wikitext")
_SCHEMA = {"alpaca": "qa", "sharegpt": "qa", "messages": "qa", "advertisegen": "adgen",
           "wikitext": "wiki"}
AUTO_WORKERS_FROM = 5000   # records; below this one process is faster than starting workers


@dataclass(frozen=True)
class Spec:
    """What to make; everything a worker process needs (picklable)."""
    fmt: str
    tokenizer: dict                  # a processor.tokenizer section
    seq_length: int
    max_source_length: int = 0       # advertisegen
    max_target_length: int = 0
    shift_labels: bool = False       # chat formats for GLM2: labels pre-shifted, seq_length tokens
    gpt2_style: bool = False         # wikitext: GPT2's convention (see wikitext.py)
    chat_template: str | None = None     # processor.tokenizer.chat_template, if set
    family_template: str = "alpaca"      # the model family's default (templates.default_template)
    columns_map: tuple[tuple[str, str], ...] = ()   # train_dataset.columns: petrun name → file's
    split: str | None = None             # a DatasetDict's split

    @property
    def column_names(self) -> dict[str, str]:
        return dict(self.columns_map)

    @property
    def sample_length(self) -> int:
        if self.fmt == "advertisegen":
            return self.max_source_length + self.max_target_length + 1
        return self.seq_length + (0 if self.shift_labels else 1)

    @property
    def columns(self) -> tuple[str, ...]:
        if self.fmt == "wikitext":
            return wikitext.GPT2_COLUMNS if self.gpt2_style else wikitext.LLAMA_COLUMNS
        return mr.DEFAULT_COLUMNS

    @property
    def schema_name(self) -> str:
        return "lm-schema" if self.fmt == "wikitext" and self.gpt2_style else _SCHEMA[self.fmt]


@dataclass
class Report:
    fmt: str
    input: str
    output: str
    sample_length: int
    columns: tuple[str, ...]
    records: int = 0                 # records (wikitext: paragraphs/sections) read
    written: int = 0
    truncated: int = 0
    fully_masked: int = 0            # samples without a single supervised label
    bad: list[BadRecord] = field(default_factory=list)
    tokens: int = 0                  # wikitext: tokens before cutting into blocks
    dropped_tokens: int = 0          # wikitext: the tail shorter than one block
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    template: str | None = None      # sharegpt/messages: the chat template the turns were rendered

    def bad_preview(self, n: int = 5) -> str:
        shown = "; ".join(f"{b.where}: {b.reason}" for b in self.bad[:n])
        return shown + (f"; ... ({len(self.bad) - n} more)" if len(self.bad) > n else "")


# --------------------------------------------------------------------------- per record

def _sample(spec: Spec, tok, obj: Any) -> tuple[dict | None, str | None, bool, bool]:
    """(sample, reason, truncated, fully_masked) for one record."""
    if spec.fmt in formats.CHAT_FORMATS:
        cols = spec.column_names
        fmt = formats.effective_format(spec.fmt, obj, cols)
        turns, reason = formats.to_turns(fmt, obj, cols)
        if reason:
            other = formats.detect(obj, cols)
            if other and other not in (spec.fmt, fmt):
                reason += f" (it looks like a {other} record: use that format)"
            return None, reason, False, False
        template = formats.training_template(fmt, spec.chat_template, spec.family_template)
        try:
            s = conversation.tokenize(template, turns, tok, spec.seq_length)
        except TemplateError as exc:
            return None, f"the {template} template cannot render it: {exc}", False, False
        ids, labels = s.input_ids, s.labels
        if spec.shift_labels:
            ids, labels = ids[:-1], labels[1:]
    else:
        reason = advertisegen.check_record(obj)
        if reason:
            return None, reason, False, False
        s = advertisegen.tokenize_record(obj, tok, spec.max_source_length, spec.max_target_length)
        ids, labels = s.input_ids, s.labels
    labels = np.asarray(labels, np.int32)
    # Counted whatever the cause (a prompt longer than the sample, or MindFormers' length check):
    # such a sample trains nothing.
    return ({"input_ids": np.asarray(ids, np.int32), "labels": labels}, None, s.truncated,
            not (labels != IGNORE_TOKEN_ID).any())


def process_chunk(spec: Spec, tok, chunk: list[Record]) -> list[tuple]:
    """[((line, index), sample or token ids, reason, truncated, fully_masked)] in chunk order."""
    if spec.fmt == "wikitext":
        return [((r.line, r.index), wikitext.encode_piece(r.obj, tok, spec.gpt2_style), None,
                 False, False) for r in chunk]
    out = []
    for r in chunk:
        try:
            out.append(((r.line, r.index), *_sample(spec, tok, r.obj)))
        except (TypeError, ValueError, AttributeError) as exc:   # odd shapes the checks missed
            out.append(((r.line, r.index), None, f"cannot tokenize ({exc})", False, False))
    return out


_WORKER: dict[str, Any] = {}


def _init_worker(spec: Spec) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle
    _WORKER["spec"], _WORKER["tok"] = spec, load_tokenizer(spec.tokenizer)


def _work(chunk: list[Record]) -> list[tuple]:
    return process_chunk(_WORKER["spec"], _WORKER["tok"], chunk)


def _map_chunks(spec: Spec, tok, items: list[Record], workers: int) -> Iterator[list[tuple]]:
    size = max(1, min(256, math.ceil(len(items) / max(1, workers * 8))))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    if workers <= 1 or len(chunks) <= 1:
        for c in chunks:
            yield process_chunk(spec, tok, c)
        return
    ctx = multiprocessing.get_context("spawn")
    # Leaving the with-block (done, error, Ctrl-C) terminates the workers.
    with ctx.Pool(min(workers, len(chunks)), initializer=_init_worker, initargs=(spec,)) as pool:
        yield from pool.imap(_work, chunks)


def stream_samples(spec: Spec, tok, items: list[Record], report: Report, *, workers: int = 1,
                   progress: Callable[[int], None] | None = None) -> Iterator[dict]:
    """Samples in input order; counts go into `report` as they pass."""
    blocks = None
    if spec.fmt == "wikitext":
        sep = tok.encode("\n") if spec.gpt2_style else []
        blocks = wikitext.Blocks(spec.sample_length, sep)
    for results in _map_chunks(spec, tok, items, workers):
        for place, sample, reason, truncated, masked in results:
            if blocks is not None:
                for block in blocks.add(sample):
                    report.written += 1
                    arr = np.asarray(block, np.int32)
                    yield ({"input_ids": arr, "attention_mask": np.ones_like(arr)}
                           if spec.gpt2_style else {"input_ids": arr})
            elif reason:
                report.bad.append(BadRecord(place[0], reason, place[1]))
            else:
                report.written += 1
                report.truncated += truncated
                report.fully_masked += masked
                yield sample
        if progress:
            progress(len(results))
    if blocks is not None:
        report.tokens, report.dropped_tokens = blocks.tokens, blocks.remainder


# --------------------------------------------------------------------------- inputs and checks

def read_items(spec: Spec, path: str,
               key: str | None = None) -> tuple[list[Record], list[BadRecord]]:
    """The units to tokenize: records, or (wikitext) paragraphs/sections numbered from 1."""
    if spec.fmt == "wikitext":
        parts = wikitext.pieces(read_text(path, key), spec.gpt2_style)
        return [Record(i, p) for i, p in enumerate(parts, 1)], []
    return read_records(path, key=key, split=spec.split)


def make_spec(fmt: str, tokenizer_cfg: Mapping, tok, *, seq_length: int | None,
              max_source_length: int | None = None, max_target_length: int | None = None,
              shift_labels: bool = False, chat_template: str | None = None,
              family_template: str = "alpaca", columns: Mapping[str, str] | None = None,
              split: str | None = None) -> Spec:
    """Check the lengths and names (UserError naming the option) and build the Spec."""
    if fmt not in FORMATS:
        raise UserError(f"unknown data format '{fmt}'", fix=f"use one of {', '.join(FORMATS)}")
    if chat_template:
        check_template(chat_template)
    columns_map = formats.check_columns(columns)
    src, tgt = max_source_length, max_target_length
    if fmt == "advertisegen":
        if src is None and tgt is not None and seq_length:
            src = seq_length - tgt - 1
        if tgt is None and src is not None and seq_length:
            tgt = seq_length - src - 1
        if src is None or tgt is None:
            raise UserError("advertisegen needs max_source_length and max_target_length",
                            key="train_dataset.max_source_length",
                            fix="pass --max-source-length and --max-target-length (seq_length = "
                                "source + target + 1), or --config with a GLM2 config")
        prefix = len(tok.prefix_ids)
        if src <= prefix or tgt < 1:
            raise UserError(f"max_source_length {src} / max_target_length {tgt} leave no room for "
                            "text", key="train_dataset.max_source_length",
                            fix=f"max_source_length must exceed {prefix} (the prompt prefix) and "
                                "max_target_length be at least 1")
        if seq_length and seq_length != src + tgt + 1:
            raise UserError(f"seq_length {seq_length} != max_source_length {src} + "
                            f"max_target_length {tgt} + 1", key="model.model_config.seq_length",
                            fix="MindFormers' rule for GLM2 training data: make them agree")
        seq_length = src + tgt + 1
    elif not seq_length or seq_length < 1:
        raise UserError("seq_length must be a positive number", key="model.model_config.seq_length",
                        fix="pass --seq-length N (the model's seq_length; samples get N + 1 tokens)")
    return Spec(fmt, dict(tokenizer_cfg), int(seq_length), int(src or 0), int(tgt or 0),
                bool(shift_labels and fmt in formats.CHAT_FORMATS),
                fmt == "wikitext" and wikitext.is_gpt2_style(tok), chat_template or None,
                family_template, columns_map, split)


def _output_kind(output: str, input_path: str, num_shards: int, overwrite: bool) -> str:
    if mr.is_mindrecord_name(output):
        kind = "mindrecord"
        target = os.path.abspath(output)
        existing = mr.existing_files(target) if os.path.isdir(os.path.dirname(target)) else []
    elif output.endswith((".jsonl", ".json")):
        kind = "jsonl"
        if num_shards != 1:
            raise UserError("--num-shards is for MindRecord output; JSON lines is one file",
                            file=output, fix="drop --num-shards or name the output *.mindrecord")
        existing = [output] if os.path.exists(output) else []
    else:
        raise UserError("the output name must end in .mindrecord (MindFormers' format) or .jsonl",
                        file=output, fix="e.g. --output out/alpaca_seq4096.mindrecord")
    if os.path.abspath(output) == os.path.abspath(input_path):
        raise UserError("the output is the input file", file=output, fix="choose another --output")
    if num_shards < 1:
        raise UserError(f"--num-shards must be at least 1, got {num_shards}", fix="use 1 or more")
    if existing and not overwrite:
        raise UserError("the output already exists", file=sorted(existing)[0],
                        fix="choose another --output or pass --overwrite")
    return kind


# --------------------------------------------------------------------------- driver

def prepare(fmt: str, input_path: str, output: str, *, tokenizer: Mapping, seq_length: int | None,
            max_source_length: int | None = None, max_target_length: int | None = None,
            shift_labels: bool = False, chat_template: str | None = None,
            family_template: str = "alpaca", columns: Mapping[str, str] | None = None,
            split: str | None = None, num_shards: int = 1, workers: int | None = None,
            overwrite: bool = False, on_start: Callable[[int], None] | None = None,
            progress: Callable[[int], None] | None = None) -> Report:
    """Tokenize `input_path` and write `output`; returns the Report. UserError on bad input.

    workers None: one process for small inputs (starting workers costs about a second), else up
    to 8. on_start(total) is called once the units to tokenize are counted; progress(n) after
    each chunk of n units.
    """
    t0 = time.perf_counter()
    tok = load_tokenizer(tokenizer)
    spec = make_spec(fmt, tokenizer, tok, seq_length=seq_length,
                     max_source_length=max_source_length, max_target_length=max_target_length,
                     shift_labels=shift_labels, chat_template=chat_template,
                     family_template=family_template, columns=columns, split=split)
    kind = _output_kind(output, input_path, num_shards, overwrite)
    if kind == "mindrecord":
        mr.file_writer_class()   # import MindSpore (seconds) before workers start, not mid-stream
    items, bad = read_items(spec, input_path)
    report = Report(fmt, input_path, output, spec.sample_length, spec.columns,
                    records=len(items) + len(bad), bad=list(bad))
    if fmt in ("sharegpt", "messages"):
        report.template = formats.training_template(fmt, spec.chat_template, spec.family_template)
    if workers is None:
        workers = 1 if len(items) < AUTO_WORKERS_FROM else min(8, os.cpu_count() or 1)
    if on_start:
        on_start(len(items))
    samples = stream_samples(spec, tok, items, report, workers=workers, progress=progress)
    try:
        first = next(samples, None)
        if first is None:
            raise _nothing_to_write(spec, report)
        try:
            mr.write_samples(output, itertools.chain([first], samples), columns=spec.columns,
                             overwrite=overwrite, schema_name=spec.schema_name,
                             num_shards=num_shards)
        except OSError as e:
            raise _write_failed(output, e.strerror or str(e), e.errno) from None
        except RuntimeError as e:   # MindSpore's FileWriter reports a full disk this way
            text = str(e)
            if "free disk" not in text:
                raise
            raise _write_failed(output, "no space left on the device (MindSpore's FileWriter: "
                                "no free disk)", errno.ENOSPC) from None
    finally:
        samples.close()
    report.bad.sort(key=lambda b: b.order)
    report.files = (mr.shard_names(os.path.abspath(output), num_shards) if kind == "mindrecord"
                    else [os.path.abspath(output)])
    report.seconds = time.perf_counter() - t0
    return report


def _write_failed(output: str, why: str, code: int | None) -> UserError:
    """The output could not be written; write_mindrecord/write_jsonl left nothing under its
    name (an earlier output of that name is untouched)."""
    fix = {errno.ENOSPC: "free disk space or write to a larger disk, then run the same command",
           errno.EDQUOT: "raise your disk quota or free space, then run the same command",
           errno.EACCES: "make the folder writable or choose another --output",
           errno.EROFS: "the file system is read-only: choose another --output"}.get(
               code, "check free disk space and that the folder is writable")
    return UserError(f"could not write the prepared data ({why}); nothing was written under "
                     "this name", file=os.path.abspath(output), key="--output", fix=fix)


def _nothing_to_write(spec: Spec, report: Report) -> UserError:
    if spec.fmt == "wikitext":
        return UserError(f"the text gives {report.tokens} tokens, less than one block of "
                         f"{spec.sample_length}", file=report.input,
                         fix="use more text or a smaller --seq-length")
    report.bad.sort(key=lambda b: b.order)
    what = (f"all {report.records} records are unusable: {report.bad_preview()}" if report.bad
            else "the input has no records")
    fields = {"alpaca": "{instruction, input, output}",
              "sharegpt": "{conversations: [{from, value}]}",
              "messages": "{messages: [{role, content}]}"}.get(spec.fmt, "{content, summary}")
    return UserError(what, file=report.input,
                     fix=f"the {spec.fmt} input must hold {fields} records (JSON, JSON lines, "
                         "Parquet or a save_to_disk folder); fields spelled differently are "
                         "mapped with --column NAME=COLUMN (train_dataset.columns)")
