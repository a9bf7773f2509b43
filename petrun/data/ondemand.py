"""Raw records (alpaca, ShareGPT, messages, AdvertiseGen — from JSON, JSON lines, Parquet, Arrow or
a save_to_disk folder) and raw wikitext, tokenized when training starts into a cache so the next
run with the same inputs starts at once.

The cache key is the hash of the data file's bytes, of the tokenizer's files and settings, the
sample length and the format options: change any of them and the data is tokenized again. Entries
are .npz files written atomically, so ranks starting together may race harmlessly. Location:
$PETRUN_CACHE_DIR, else $XDG_CACHE_HOME/petrun/data, else ~/.cache/petrun/data.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from petrun.atomic import atomic_file
from petrun.data.cache import default_cache_dir
from petrun.data.tokenizer import load_tokenizer

CACHE_VERSION = 2   # bump when the tokenized output of the same inputs changes (2: message weights)


@dataclass(frozen=True)
class RawText:
    """How to tokenize raw records met in a dataset_dir (None in open_dataset: refuse them)."""
    tokenizer: Mapping | None                 # a processor.tokenizer section
    cache_dir: str | None = None
    max_source_length: int | None = None      # AdvertiseGen
    max_target_length: int | None = None
    chat_template: str | None = None          # processor.tokenizer.chat_template
    family_template: str = "alpaca"           # the model family's default template
    columns: Mapping | None = None            # <section>.columns: petrun name → the file's
    split: str | None = None                  # <section>.split of a DatasetDict folder

    @classmethod
    def from_config(cls, cfg, section: str = "train_dataset") -> "RawText":
        """From a resolved Config: the dataset's own tokenizer (GLM2 style) or processor.tokenizer,
        the chat template predict uses, the column names and split."""
        from petrun.data.templates import default_template

        tok = cfg.get(f"{section}.tokenizer") or cfg.get("processor.tokenizer") or {}
        arch = cfg.get("model.arch.type")
        family = default_template(arch, tok.get("type")) if arch else "alpaca"
        return cls(dict(tok), None, cfg.get(f"{section}.max_source_length"),
                   cfg.get(f"{section}.max_target_length"),
                   cfg.get("processor.tokenizer.chat_template") or tok.get("chat_template"),
                   family, dict(cfg.get(f"{section}.columns") or {}) or None,
                   cfg.get(f"{section}.split"))

    def template_for(self, fmt: str) -> str | None:
        """The chat template records of `fmt` are rendered with (None for formats that have
        none: AdvertiseGen, wikitext). The run records it so predict, chat and export speak it."""
        from petrun.data.formats import CHAT_FORMATS, training_template
        if fmt not in CHAT_FORMATS:
            return None
        return training_template(fmt, self.chat_template, self.family_template)


def raw_format(first: Any, columns: Mapping | None = None) -> str | None:
    """'messages', 'sharegpt', 'alpaca' or 'advertisegen' when the first record is raw text."""
    from petrun.data.formats import detect
    return detect(first, columns)


def _file_hash(path: str, split: str | None = None) -> str:
    """The bytes of a file, or of a save_to_disk folder's data files (of the split read)."""
    h = hashlib.sha256()
    files = [path]
    if os.path.isdir(path):
        from petrun.data.tables import folder_files
        files = folder_files(path, split=split)
        h.update(json.dumps([os.path.relpath(f, path) for f in files]).encode())
    for name in files:
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def cache_key(path: str, fmt: str, tokenizer, sample_length: int, options: Mapping,
              split: str | None = None) -> str:
    # The tokenizer as resolved (not the YAML spelling): same files + same ids = same tokens.
    settings = {"class": type(tokenizer).__name__, "family": tokenizer.family,
                "ids": [tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.unk_id],
                "prefix": list(tokenizer.prefix_ids), "vocab_size": tokenizer.vocab_size}
    material = {
        "version": CACHE_VERSION, "format": fmt, "data": _file_hash(path, split),
        "tokenizer": [_file_hash(f) for f in tokenizer.files], "settings": settings,
        "sample_length": sample_length, "options": dict(options),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def tokenized(path: str, fmt: str, raw: RawText, *, seq_length: int, extra_tokens: int,
              key: str) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays int32 [n, seq_length + extra_tokens] by column, meta) for a raw data file.

    meta: cache (path), reused (bool), records, bad (count), bad_preview, truncated.
    """
    from petrun.data import prepare as prep

    tok = load_tokenizer(raw.tokenizer or {})
    # Alpaca samples are seq_length + 1 long; with extra_tokens 0 (GLM2) they are shifted by one.
    spec = prep.make_spec(fmt, raw.tokenizer or {}, tok,
                          # alpaca and wikitext samples: seq_length + 1 tokens (make_spec)
                          seq_length=seq_length if fmt != "advertisegen" else seq_length + extra_tokens,
                          max_source_length=raw.max_source_length,
                          max_target_length=raw.max_target_length, shift_labels=extra_tokens == 0,
                          chat_template=raw.chat_template, family_template=raw.family_template,
                          columns=raw.columns, split=raw.split)
    options = {"max_source_length": spec.max_source_length,
               "max_target_length": spec.max_target_length, "shift": spec.shift_labels}
    if fmt in ("alpaca", "sharegpt", "messages"):   # the tokens depend on these too
        options.update(template=spec.chat_template, family=spec.family_template,
                       columns=spec.columns_map, split=spec.split)
    digest = cache_key(path, fmt, tok, spec.sample_length, options, spec.split)
    folder = os.path.expanduser(raw.cache_dir or default_cache_dir())
    stem = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    entry = os.path.join(folder, f"{stem}-{fmt}-{spec.sample_length}-{digest[:16]}.npz")
    if os.path.isfile(entry):
        try:
            with np.load(entry, allow_pickle=False) as z:
                arrays = {c: z[c] for c in spec.columns}
                meta = json.loads(str(z["meta"]))
            return arrays, {**meta, "cache": entry, "reused": True}
        except (OSError, ValueError, KeyError):
            pass   # unreadable (e.g. disk full when it was written): tokenize again

    items, bad = prep.read_items(spec, path, key)
    report = prep.Report(fmt, path, entry, spec.sample_length, spec.columns,
                         records=len(items) + len(bad), bad=list(bad))
    rows = list(prep.stream_samples(spec, tok, items, report))
    if not rows:
        raise prep._nothing_to_write(spec, report)
    arrays = {c: np.stack([r[c] for r in rows]) for c in spec.columns}
    report.bad.sort(key=lambda b: b.order)
    meta = {"format": fmt, "records": report.records, "samples": report.written,
            "bad": len(report.bad), "bad_preview": report.bad_preview(),
            "truncated": report.truncated, "fully_masked": report.fully_masked}
    _save(entry, arrays, meta)
    return arrays, {**meta, "cache": entry, "reused": False}


def _save(entry: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    os.makedirs(os.path.dirname(entry), exist_ok=True)
    with atomic_file(entry) as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
