"""wikitext-2 raw text → contiguous blocks of seq_length + 1 tokens (reference/mindformers.md §7.1.3,
§7.3). Two MindFormers conventions, picked by the tokenizer family:

* Llama (llama_preprocess --dataset_type wiki): the cleaned text is split into paragraphs at blank
  lines, heading paragraphs ("= Title =") dropped, each paragraph encoded as [bos] + ids + [eos];
  column input_ids only, schema "wiki".
* GPT2 (wikitext2_data_process.py): the lines of each section (between "= heading =" lines) are
  cleaned and joined by spaces, sections joined by "\\n" and encoded as one text; columns input_ids
  and attention_mask (all ones), schema "lm-schema". MindFormers drops the file's last section
  (it is only kept when a heading follows it); petrun keeps it.

All tokens are concatenated and cut into full blocks; the remainder is dropped (and reported).

As a dataset_dir, raw wikitext is a wiki.*.tokens (or .raw) file, or a folder holding the
unpacked archive (wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens: training reads the
train split, evaluation the valid one) or a single such file. MindFormers' seed passes
`/data/wikitext-2/train` (a folder its MindDataset reads MindRecord from); a folder with MindRecord
files is still read as MindRecord.
"""
from __future__ import annotations

import os
import re

GPT2_COLUMNS = ("input_ids", "attention_mask")
LLAMA_COLUMNS = ("input_ids",)


SUFFIXES = (".tokens", ".raw")


def tokens_file(folder: str, split: str = "train") -> str | None:
    """The raw wikitext file a dataset folder stands for: wiki.<split>.tokens (or .raw), else
    its only *.tokens/*.raw file; None when it holds no wikitext."""
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(SUFFIXES)
                       and os.path.isfile(os.path.join(folder, n)))
    except OSError:
        return None
    for suffix in SUFFIXES:
        if f"wiki.{split}{suffix}" in names:
            return os.path.join(folder, f"wiki.{split}{suffix}")
    return os.path.join(folder, names[0]) if len(names) == 1 else None


def clean_wikitext(text: str, gpt2_style: bool = False) -> str:
    """MindFormers' wikitext cleaning: undo the tokenized spacing of wikitext-2 (the GPT2 script
    also glues " ." to the word before it; llama_preprocess does not)."""
    text = text.replace("s '", "s'")
    text = re.sub(r"/' [0-9]/", r"/'[0-9]/", text)
    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "),
                 (" . ", ". ")) + (((" .", "."),) if gpt2_style else ()) + (
                 (" ! ", "! "), (" ? ", "? "), (" , ", ", ")):
        text = text.replace(a, b)
    text = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", text)
    text = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", text)
    text = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", text)
    text = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', text)
    text = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", text)
    for a, b in (("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \u00b0 ", "\u00b0"),
                 (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")):
        text = text.replace(a, b)
    return text


def llama_paragraphs(text: str) -> list[str]:
    return [p for p in clean_wikitext(text).split("\n\n") if p and not p.strip().startswith("=")]


def gpt2_sections(text: str) -> list[str]:
    sections, current = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("=") and line.endswith("="):
            if current:
                sections.append(current)
            current = []
        else:
            current.append(line)
    if current:
        sections.append(current)
    return [" ".join(clean_wikitext(s, True) for s in lines).strip() for lines in sections]


def is_gpt2_style(tokenizer) -> bool:
    return getattr(tokenizer, "family", "") == "gpt2"


def pieces(text: str, gpt2_style: bool) -> list[str]:
    """The units tokenized independently (and in parallel)."""
    return gpt2_sections(text) if gpt2_style else llama_paragraphs(text)


def encode_piece(piece: str, tokenizer, gpt2_style: bool) -> list[int]:
    if gpt2_style:
        return tokenizer.encode(piece)
    return tokenizer.encode(piece, add_bos=True, add_eos=True)


class Blocks:
    """Concatenates encoded pieces and hands out full blocks of `size` tokens.

    GPT2 style puts enc("\\n") between sections: byte-level BPE never merges across a newline, so
    this equals encoding the sections joined by "\\n" in one go.
    """

    def __init__(self, size: int, separator: list[int] | None = None):
        self.size = size
        self.separator = list(separator or [])
        self._buf: list[int] = []
        self._started = False
        self.tokens = 0

    def add(self, ids: list[int]) -> list[list[int]]:
        if self._started and self.separator:
            self._buf += self.separator
        self._started = True
        self._buf += ids
        self.tokens += len(ids)
        out = []
        while len(self._buf) >= self.size:
            out.append(self._buf[:self.size])
            del self._buf[:self.size]
        return out

    @property
    def remainder(self) -> int:
        return len(self._buf)
