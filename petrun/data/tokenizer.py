"""Tokenizers: a small interface, the SentencePiece ones (Llama2, ChatGLM2) and load_tokenizer.

Only local files are read; nothing is ever downloaded. The Llama convention
(reference/mindformers.md §1.9, §7.1): unk 0 '<unk>', bos 1 '<s>', eos 2 '</s>', and pad is the
unk token, so pad id 0. ChatGLM2 (§7.2) puts its own specials ([MASK], [gMASK], [sMASK], sop, eop)
after the SentencePiece pieces. tokenizer.json and GPT2 vocab.json + merges.txt live in bpe.py.
"""
from __future__ import annotations

import os
from typing import Mapping, Protocol, Sequence, runtime_checkable

from petrun.errors import UserError

from petrun.data.tokenizer_keys import (MERGES_FILE_KEY, TOKENIZER_FILE_KEY,  # noqa: F401
                                        TYPE_KEY, VOCAB_FILE_KEY)


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    family: str               # "llama", "glm2", "gpt2" or "hf": picks format conventions
    prefix_ids: list[int]     # what add_special_tokens=True puts before a text
    files: list[str]          # the files it was read from (cache keys hash them)

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class SentencePieceTokenizer:
    """A `tokenizer.model` used the way MindFormers' LlamaTokenizer (legacy mode) uses it.

    `encode` is plain SentencePiece encoding (with its dummy-prefix space) plus optional bos/eos,
    which is what `LlamaTokenizer(text)` produces for text without literal special-token strings.
    """

    family = "llama"

    def __init__(self, model_file: str | os.PathLike, *, unk_token: str = "<unk>",
                 bos_token: str = "<s>", eos_token: str = "</s>", pad_token: str = "<unk>",
                 key: str = VOCAB_FILE_KEY):
        import sentencepiece as spm

        path = os.fspath(model_file)
        if not os.path.isfile(path):
            raise UserError("tokenizer model file not found", file=path, key=key,
                            fix="point it at a SentencePiece 'tokenizer.model' file "
                                "(for the demo: data/demo/tokenizer.model)")
        self.model_file = path
        self.files = [path]
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(path)
        except (OSError, RuntimeError) as exc:
            raise UserError(f"cannot read the tokenizer model: {exc}", file=path, key=key,
                            fix="use a SentencePiece 'tokenizer.model' (binary protobuf), not "
                                "tokenizer.json or a Hugging Face folder") from None
        self.unk_id = self._special_id(unk_token, "unk_token", key)
        self.bos_id = self._special_id(bos_token, "bos_token", key)
        self.eos_id = self._special_id(eos_token, "eos_token", key)
        self.pad_id = self._special_id(pad_token, "pad_token", key)
        self.prefix_ids = [self.bos_id]

    def _special_id(self, piece: str, name: str, key: str) -> int:
        idx = self._sp.piece_to_id(piece)
        # piece_to_id answers the unk id for unknown pieces, so check the round trip.
        if self._sp.id_to_piece(idx) != piece:
            raise UserError(f"{name} '{piece}' is not in the tokenizer vocabulary",
                            file=self.model_file, key=key.rsplit(".", 1)[0] + "." + name,
                            fix=f"use the token the model was trained with (Llama: unk '<unk>', "
                                f"bos '<s>', eos '</s>', pad '<unk>')")
        return idx

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = list(self._sp.encode(text))
        if add_bos:
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        # Negative ids are label "ignore" markers (-100); skipping them lets labels be decoded.
        return self._sp.decode([int(i) for i in ids if int(i) >= 0])

    def id_to_piece(self, idx: int) -> str:
        return self._sp.id_to_piece(int(idx))

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.model_file!r}, vocab_size={self.vocab_size})"


class ChatGLM2Tokenizer(SentencePieceTokenizer):
    """ChatGLM2's tokenizer: SentencePiece pieces, then five specials numbered after them.

    As MindFormers' ChatGLM2Tokenizer: bos/eos are the SentencePiece ones (1/2), pad is unk (0)
    whatever the YAML's '<sop>'/'<eop>' say, and add_special_tokens puts [gMASK], sop in front
    (ids 64790, 64792 with the 64789-piece model).
    """

    family = "glm2"
    SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")

    def __init__(self, model_file: str | os.PathLike, *, key: str = VOCAB_FILE_KEY):
        super().__init__(model_file, key=key)
        n = self._sp.get_piece_size()
        self.special_ids = {name: n + i for i, name in enumerate(self.SPECIALS)}
        self.bos_id, self.eos_id = self._sp.bos_id(), self._sp.eos_id()
        self.unk_id = self.pad_id = self._sp.unk_id()
        if min(self.bos_id, self.eos_id, self.unk_id) < 0:
            raise UserError("the SentencePiece model has no bos/eos/unk pieces", file=self.model_file,
                            key=key, fix="use ChatGLM2's tokenizer.model (unk 0, bos 1, eos 2)")
        self.prefix_ids = [self.special_ids["[gMASK]"], self.special_ids["sop"]]

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size() + len(self.SPECIALS)

    def decode(self, ids: Sequence[int]) -> str:
        n = self._sp.get_piece_size()
        return self._sp.decode([int(i) for i in ids if 0 <= int(i) < n])

    def id_to_piece(self, idx: int) -> str:
        names = {v: k for k, v in self.special_ids.items()}
        return names.get(int(idx)) or self._sp.id_to_piece(int(idx))


# MindFormers tokenizer type names → how their files are read.
_SENTENCEPIECE_TYPES = {"LlamaTokenizer", "LlamaTokenizerFast", "Llama2Tokenizer"}
_GLM2_TYPES = {"ChatGLM2Tokenizer", "ChatGLM3Tokenizer"}
_GPT2_TYPES = {"GPT2Tokenizer", "GPT2TokenizerFast"}
_SPECIAL_KEYS = ("unk_token", "bos_token", "eos_token", "pad_token")


def load_tokenizer(tokenizer_cfg: Mapping) -> Tokenizer:
    """Build the tokenizer described by a MindFormers `processor.tokenizer` section.

    tokenizer_file (a Hugging Face tokenizer.json) wins; otherwise the type decides how
    vocab_file is read: GPT2Tokenizer → vocab.json + merges_file, ChatGLM2Tokenizer →
    SentencePiece with GLM specials, anything Llama-like → SentencePiece.
    """
    cfg = dict(tokenizer_cfg or {})
    specials = {k: cfg[k] for k in _SPECIAL_KEYS if cfg.get(k) is not None}
    if cfg.get("tokenizer_file"):
        from petrun.data.bpe import HFTokenizer
        return HFTokenizer.from_file(_local(cfg["tokenizer_file"]), family=_family(cfg.get("type")),
                                     **specials)
    kind = cfg.get("type") or "LlamaTokenizer"
    known = _SENTENCEPIECE_TYPES | _GLM2_TYPES | _GPT2_TYPES
    if kind not in known:
        raise UserError(f"tokenizer type '{kind}' is not supported by petrun's data pipeline",
                        key=TYPE_KEY,
                        fix=f"use one of {sorted(known)}, or set tokenizer_file to a Hugging Face "
                            "tokenizer.json")
    vocab_file = cfg.get("vocab_file")
    if not vocab_file:
        what = "vocab.json (with merges_file)" if kind in _GPT2_TYPES else "'tokenizer.model'"
        raise UserError("no tokenizer model given", key=VOCAB_FILE_KEY,
                        fix=f"set processor.tokenizer.vocab_file to a {what} or tokenizer_file to "
                            "a tokenizer.json (petrun never downloads one)")
    vocab_file = _local(vocab_file)
    _check_family(kind, vocab_file)
    if kind in _GPT2_TYPES or cfg.get("merges_file"):
        from petrun.data.bpe import HFTokenizer
        merges = cfg.get("merges_file") or os.path.join(os.path.dirname(vocab_file), "merges.txt")
        return HFTokenizer.from_bpe(vocab_file, _local(merges), **specials)
    if kind in _GLM2_TYPES:
        return ChatGLM2Tokenizer(vocab_file)
    return SentencePieceTokenizer(vocab_file, **specials)


def _check_family(kind: str, vocab_file: str) -> None:
    """The type says how vocab_file is read; a file of another family's kind (GPT-2's vocab.json
    given to a SentencePiece type, or a SentencePiece model to GPT2Tokenizer) is an error, not a
    tokenizer that runs and yields nonsense ids (it trained at loss 0 before this check)."""
    try:
        with open(vocab_file, "rb") as f:
            head = f.read(64).lstrip()
    except OSError:
        return   # the reader reports a missing/unreadable file with its own message
    is_json = head[:1] in (b"{", b"[")
    if kind in _GPT2_TYPES and head and not is_json:
        raise UserError(f"{kind} reads GPT-2's vocab.json (with merges.txt), and this file is not "
                        "JSON: a SentencePiece tokenizer.model, the tokenizer of another model "
                        "family?", file=vocab_file, key=VOCAB_FILE_KEY,
                        fix="point vocab_file at the model's own vocab.json, or set "
                            f"{TYPE_KEY} to the family this tokenizer.model belongs to "
                            "(LlamaTokenizer, ChatGLM2Tokenizer)")
    if kind not in _GPT2_TYPES and is_json:
        raise UserError(f"{kind} reads a SentencePiece tokenizer.model, and this file is a JSON "
                        "vocabulary: GPT-2's vocab.json or a tokenizer.json, the tokenizer of "
                        "another model family", file=vocab_file, key=VOCAB_FILE_KEY,
                        fix="point vocab_file at the model's own tokenizer.model (or set "
                            "tokenizer_file for a Hugging Face tokenizer.json)")


def _local(path) -> str:
    return os.path.expanduser(str(path))


def _family(kind: str | None) -> str:
    if kind in _GPT2_TYPES:
        return "gpt2"
    return "llama" if kind in _SENTENCEPIECE_TYPES else "hf"


def tokenizer_config_for_path(path: str | os.PathLike, kind: str | None = None) -> dict:
    """A processor.tokenizer section for a path given on the command line.

    `path` may be a tokenizer.model, a tokenizer.json, a GPT2 vocab.json (merges.txt beside it) or
    a folder holding one of them; `kind` is a MindFormers type name (default from the files).
    """
    path = _local(path)
    if os.path.isdir(path):
        for name in ("tokenizer.json", "vocab.json", "tokenizer.model"):
            if os.path.isfile(os.path.join(path, name)):
                return tokenizer_config_for_path(os.path.join(path, name), kind)
        raise UserError("no tokenizer.json, vocab.json or tokenizer.model in this folder",
                        file=path, fix="point --tokenizer at the tokenizer file itself")
    if not os.path.isfile(path):
        raise UserError("tokenizer file not found", file=path,
                        fix="give a local tokenizer.model, tokenizer.json or vocab.json "
                            "(petrun never downloads one)")
    if path.endswith(".json") and os.path.basename(path) != "vocab.json" and _is_hf_json(path):
        return {"tokenizer_file": path, **({"type": kind} if kind else {})}
    if path.endswith(".json"):
        return {"type": kind or "GPT2Tokenizer", "vocab_file": path,
                "merges_file": os.path.join(os.path.dirname(path), "merges.txt")}
    return {"type": kind or "LlamaTokenizer", "vocab_file": path}


def _is_hf_json(path: str) -> bool:
    import json
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model" in data
