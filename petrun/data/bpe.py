"""Tokenizers read with the `tokenizers` library: a Hugging Face tokenizer.json, or GPT2's byte-level
BPE from vocab.json + merges.txt (MindFormers' GPT2Tokenizer files). Local files only.

Special tokens are looked up by their strings (the YAML's bos_token/eos_token/... or the usual
names); GPT2 uses '<|endoftext|>' for all four, so its pad id is the eos id.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from petrun.errors import UserError
from petrun.data.tokenizer_keys import MERGES_FILE_KEY, TOKENIZER_FILE_KEY, VOCAB_FILE_KEY

# Candidates tried, in order, when the YAML names no special token.
_DEFAULTS = {
    "bos_token": ("<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>"),
    "eos_token": ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"),
    "unk_token": ("<unk>", "<|endoftext|>"),
}
GPT2_SPECIAL = "<|endoftext|>"


class HFTokenizer:
    """A `tokenizers.Tokenizer` behind petrun's Tokenizer interface (encode never adds specials
    on its own: bos/eos come from add_bos/add_eos, as for SentencePiece)."""

    def __init__(self, tok, files: list[str], *, family: str, key: str,
                 unk_token: str | None = None, bos_token: str | None = None,
                 eos_token: str | None = None, pad_token: str | None = None):
        self._tok = tok
        self.files = files
        self.family = family
        self._key = key
        given = {"bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token}
        ids = {name: self._find(name, given[name]) for name in given}
        self.bos_id, self.eos_id = ids["bos_token"], ids["eos_token"]
        # A vocabulary without unk (byte-level BPE never needs one) maps unk to eos.
        self.unk_id = ids["unk_token"] if ids["unk_token"] is not None else self.eos_id
        self.pad_id = self._find("pad_token", pad_token) if pad_token else self.unk_id
        if self.bos_id is None or self.eos_id is None:
            missing = "bos_token" if self.bos_id is None else "eos_token"
            raise UserError(f"cannot tell which token is the {missing[:3]} token",
                            file=files[0], key=key.rsplit(".", 1)[0] + "." + missing,
                            fix=f"set processor.tokenizer.{missing} to a token of this vocabulary")
        self.prefix_ids = [] if family == "gpt2" else [self.bos_id]

    def _find(self, name: str, token: str | None) -> int | None:
        for cand in ([token] if token else _DEFAULTS.get(name, ())):
            idx = self._tok.token_to_id(cand)
            if idx is not None:
                return idx
        if token:
            raise UserError(f"{name} '{token}' is not in the tokenizer vocabulary", file=self.files[0],
                            key=self._key.rsplit(".", 1)[0] + "." + name,
                            fix="use a token the tokenizer was trained with")
        return None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_file(cls, path: str, *, family: str = "hf", **specials) -> "HFTokenizer":
        """A Hugging Face tokenizer.json."""
        from tokenizers import Tokenizer as _Tok
        _require(path, TOKENIZER_FILE_KEY, "a Hugging Face 'tokenizer.json'")
        try:
            tok = _Tok.from_file(path)
        except Exception as exc:   # the Rust side raises plain Exception subclasses
            raise UserError(f"cannot read the tokenizer.json: {str(exc).splitlines()[0]}", file=path,
                            key=TOKENIZER_FILE_KEY,
                            fix="use the tokenizer.json saved with the model (tokenizers format)") \
                from None
        return cls(tok, [path], family=family, key=TOKENIZER_FILE_KEY, **specials)

    @classmethod
    def from_bpe(cls, vocab_file: str, merges_file: str, **specials) -> "HFTokenizer":
        """GPT2's byte-level BPE: vocab.json (token → id) and merges.txt."""
        from tokenizers import Tokenizer as _Tok, decoders, models, pre_tokenizers
        _require(vocab_file, VOCAB_FILE_KEY, "GPT2's 'vocab.json'")
        _require(merges_file, MERGES_FILE_KEY, "GPT2's 'merges.txt' (set merges_file)")
        try:
            with open(vocab_file, encoding="utf-8") as f:
                vocab = json.load(f)
            with open(merges_file, encoding="utf-8") as f:
                merges = [tuple(line.split()) for line in f
                          if line.strip() and not line.startswith("#version")]
            if not isinstance(vocab, dict) or any(len(m) != 2 for m in merges):
                raise ValueError("vocab.json must map tokens to ids; merges.txt holds 'a b' pairs")
            tok = _Tok(models.BPE(vocab, merges))
        except Exception as exc:   # OSError, bad JSON, or the Rust side refusing the merges
            raise UserError(f"cannot read the GPT2 vocabulary: {str(exc).splitlines()[0]}",
                            file=vocab_file, key=VOCAB_FILE_KEY,
                            fix="vocab_file: GPT2's vocab.json, merges_file: its merges.txt") from None
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            specials.setdefault(name, GPT2_SPECIAL)
        # "<|endoftext|>" written in a text is the special token, as in GPT2Tokenizer.
        present = {t for t in set(specials.values()) if tok.token_to_id(t) is not None}
        tok.add_special_tokens(sorted(present))
        return cls(tok, [vocab_file, merges_file], family="gpt2", key=VOCAB_FILE_KEY, **specials)

    # ------------------------------------------------------------------ interface
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids if int(i) >= 0], skip_special_tokens=False)

    def id_to_piece(self, idx: int) -> str:
        return self._tok.id_to_token(int(idx))

    def __repr__(self) -> str:
        return f"HFTokenizer({self.files[0]!r}, family={self.family!r}, vocab_size={self.vocab_size})"


def _require(path: str, key: str, what: str) -> None:
    if not os.path.isfile(path):
        raise UserError("tokenizer file not found", file=path, key=key,
                        fix=f"point it at {what}; petrun never downloads tokenizers")
