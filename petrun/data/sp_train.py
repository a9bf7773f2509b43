"""Train a small SentencePiece model with Llama's conventions (`petrun data train-tokenizer`).

The bundled demo tokenizer is made this way (scripts/make_demo_data.py): BPE, byte fallback (no
text is ever unk), digits split, whitespace kept as written (the alpaca label arithmetic relies on
it), unk/bos/eos = 0/1/2 and no pad piece (pad is unk). One thread keeps the result reproducible.
"""
from __future__ import annotations

import io
import os
import re
from typing import Iterable

from petrun.errors import UserError


def train_sentencepiece(texts: Iterable[str], vocab_size: int, *, model_type: str = "bpe") -> bytes:
    """The serialized model (the bytes of a tokenizer.model)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    return buf.getvalue()


def corpus_texts(path: str) -> list[str]:
    """The strings a tokenizer should learn from `path`.

    Alpaca / ShareGPT / messages JSON: each vicuna round, as the data pipeline will encode it;
    AdvertiseGen JSON lines: content and summary; anything else: its non-empty lines.
    """
    from petrun.data.records import read_records

    if path.endswith((".json", ".jsonl")):
        from petrun.data import formats
        from petrun.data.templates import VICUNA_SEP2, render, to_text

        records, _bad = read_records(path)
        texts = []
        for rec in records:
            obj = rec.obj
            fmt = formats.detect(obj)
            turns = formats.to_turns(fmt, obj)[0] if fmt in formats.CHAT_FORMATS else None
            if turns is None:
                texts += [v for k in ("content", "summary")
                          if isinstance(obj, dict) and isinstance(v := obj.get(k), str)]
                continue
            template = formats.training_template(fmt, None, "alpaca")
            texts += [r for r in to_text(render(template, turns)).split(VICUNA_SEP2) if r]
        return texts
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the corpus: {exc}", file=path,
                        fix="give a UTF-8 text file (one sentence per line) or alpaca JSON") from None


def train_tokenizer_file(corpus: str, output: str, vocab_size: int, *,
                         overwrite: bool = False) -> tuple[str, int]:
    """Train on `corpus`, write OUTPUT/tokenizer.model (or OUTPUT if it ends in .model) atomically.

    Returns (path written, number of training strings).
    """
    from petrun.atomic import write_bytes_atomic

    if os.path.isdir(corpus):
        raise UserError("is a directory, not a corpus file", file=corpus, key="--input",
                        fix="pass the file inside it (a text file or alpaca JSON)")
    if not os.path.isfile(corpus):
        raise UserError("corpus file not found", file=corpus, fix="give a text or alpaca JSON file")
    if vocab_size < 1:
        raise UserError(f"--vocab-size must be positive, got {vocab_size}", fix="the demo uses 512")
    target = output if output.endswith(".model") else os.path.join(output, "tokenizer.model")
    if os.path.exists(target) and not overwrite:
        raise UserError("the output already exists", file=target,
                        fix="choose another --output or pass --overwrite")
    texts = corpus_texts(corpus)
    if not texts:
        raise UserError("the corpus has no text", file=corpus, fix="give a non-empty corpus")
    try:
        data = train_sentencepiece(texts, vocab_size)
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1].split("] ")[-1]
        if "smaller than required" in msg:
            # SentencePiece's own advice names its trainer flags (--character_coverage), which
            # petrun does not have: keep its numbers, say the rest in petrun's terms.
            counts = re.search(r"(\d+) vs (\d+)", msg)
            msg = (f"--vocab-size {counts[1]} is smaller than the {counts[2]} pieces this corpus "
                   f"needs at least" if counts else "--vocab-size is smaller than this corpus needs")
            fix = ("raise --vocab-size: byte fallback needs 259 pieces (bytes, unk, bos, eos) plus "
                   "one per character of the corpus")
        else:
            fix = "lower --vocab-size (a small corpus supports only a small vocabulary) or give more text"
        raise UserError(f"SentencePiece could not train: {msg}", file=corpus, fix=fix) from None
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    write_bytes_atomic(target, data)
    return target, len(texts)
