"""Tokenizers: a small interface and the SentencePiece (Llama) implementation.

Only local files are read; nothing is ever downloaded. The Llama convention
(reference/mindformers.md §1.9, §7.1): unk 0 '<unk>', bos 1 '<s>', eos 2 '</s>', and pad is the
unk token, so pad id 0.
"""
from __future__ import annotations

import os
from typing import Mapping, Protocol, Sequence, runtime_checkable

from petrun.errors import UserError

VOCAB_FILE_KEY = "processor.tokenizer.vocab_file"
TYPE_KEY = "processor.tokenizer.type"


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class SentencePieceTokenizer:
    """A `tokenizer.model` used the way MindFormers' LlamaTokenizer (legacy mode) uses it.

    `encode` is plain SentencePiece encoding (with its dummy-prefix space) plus optional bos/eos,
    which is what `LlamaTokenizer(text)` produces for text without literal special-token strings.
    """

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


# MindFormers tokenizer type names that are SentencePiece models with Llama special tokens.
_SENTENCEPIECE_TYPES = {"LlamaTokenizer", "LlamaTokenizerFast"}


def load_tokenizer(tokenizer_cfg: Mapping) -> SentencePieceTokenizer:
    """Build the tokenizer described by a MindFormers `processor.tokenizer` section."""
    cfg = dict(tokenizer_cfg or {})
    kind = cfg.get("type", "LlamaTokenizer")
    if kind not in _SENTENCEPIECE_TYPES:
        raise UserError(f"tokenizer type '{kind}' is not supported by petrun's data pipeline",
                        key=TYPE_KEY,
                        fix="use 'LlamaTokenizer' with vocab_file pointing at a tokenizer.model")
    vocab_file = cfg.get("vocab_file")
    if not vocab_file:
        raise UserError("no tokenizer model given", key=VOCAB_FILE_KEY,
                        fix="set processor.tokenizer.vocab_file to a SentencePiece "
                            "'tokenizer.model' (petrun never downloads one)")
    specials = {k: cfg[k] for k in ("unk_token", "bos_token", "eos_token", "pad_token")
                if cfg.get(k) is not None}
    return SentencePieceTokenizer(os.path.expanduser(str(vocab_file)), **specials)
