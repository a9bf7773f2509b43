"""petrun's tokenizer as the files AutoTokenizer loads: tokenizer.json (+ the source files:
tokenizer.model, or GPT-2's vocab.json + merges.txt), tokenizer_config.json with the chat
template, special_tokens_map.json.

    write_hf_tokenizer(cfg.get("processor.tokenizer"), "out/", template="alpaca")

tokenizer_config.json names the generic PreTrainedTokenizerFast, so transformers uses
tokenizer.json as written (a model-specific class would rebuild parts of the pipeline its own way,
differently across transformers versions). tokenizer.json reproduces petrun's encoding:
  - GPT-2 vocab.json/merges.txt and tokenizer.json tokenizers are already `tokenizers` objects
    (petrun.data.bpe): saved as they are;
  - SentencePiece models (Llama, ChatGLM2) are converted here: the `tokenizers` library reads
    no .model file (transformers' converter is a test-only dependency of petrun). BPE: the pieces
    as the vocabulary and merges recovered from it (a pair merges when both halves and their join
    are pieces, ranked by the join's id: SentencePiece merges by piece score, which falls with id),
    byte fallback as trained; Unigram: pieces with their scores. SentencePiece's normalizer
    (precompiled charsmap) and its dummy-prefix "▁" + spaces → "▁" become tokenizers
    normalizers, applied to each run of text between special tokens, as petrun's round-by-round
    encoding gives every round its dummy prefix;
  - petrun's `prefix_ids` (Llama <s>, ChatGLM2 [gMASK] sop, GPT-2 nothing) become the
    post-processor, so tokenizer(text) gives petrun's ids; ChatGLM2's five specials follow the
    pieces with petrun's ids.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from petrun.atomic import atomic_file
from petrun.data.tokenizer import VOCAB_FILE_KEY, load_tokenizer
from petrun.errors import UserError

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class TokenizerFiles:
    files: list[str]        # names written into the folder
    template: str | None    # petrun's template name the chat template renders
    tokenizer: object       # petrun's tokenizer (what the files reproduce)


def _proto(model_file: str):
    from sentencepiece import sentencepiece_model_pb2 as pb   # ships with sentencepiece

    proto = pb.ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def sentencepiece_to_tokenizers(model_file: str, extra_specials: list[str] = ()):
    """A `tokenizers.Tokenizer` encoding like SentencePiece's `encode` on `model_file` (see the
    module docstring); control pieces and `extra_specials` (appended after the pieces, in order)
    are special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    proto = _proto(model_file)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    unk = next((i for i, (_, _, t) in enumerate(pieces) if t == _UNKNOWN), None)
    if spec.model_type == 2:   # BPE
        mergeable = {p for p, _, t in pieces if t in (_NORMAL, _USER_DEFINED)}
        merges = []
        for piece in mergeable:
            for cut in range(1, len(piece)):
                left, right = piece[:cut], piece[cut:]
                if left in vocab and right in vocab:
                    merges.append((vocab[piece], vocab[left], vocab[right], left, right))
        merges = [(left, right) for *_, left, right in sorted(merges)]
        model = models.BPE(vocab, merges, unk_token=pieces[unk][0] if unk is not None else None,
                           fuse_unk=True, byte_fallback=bool(spec.byte_fallback))
    elif spec.model_type == 1:   # Unigram
        model = models.Unigram([(p, s) for p, s, _ in pieces], unk_id=unk,
                               byte_fallback=bool(spec.byte_fallback))
    else:
        raise UserError(f"petrun converts SentencePiece BPE and Unigram models, not model type "
                        f"{spec.model_type}", file=model_file, key=VOCAB_FILE_KEY,
                        fix="export with a BPE or Unigram tokenizer.model")
    tok = Tokenizer(model)
    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        from tokenizers import Regex
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if norm.add_dummy_prefix else []))
    control = [p for p, _, t in pieces if t in (_CONTROL, _UNKNOWN)]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in control + list(extra_specials)])
    return tok


def _set_prefix(tok, petrun_tok) -> None:
    """petrun's prefix_ids as the post-processor (what add_special_tokens=True puts first)."""
    from tokenizers import processors

    ids = list(petrun_tok.prefix_ids)
    if not ids:
        tok.post_processor = None
        return
    names = [petrun_tok.id_to_piece(i) for i in ids]
    tok.post_processor = processors.TemplateProcessing(
        single=" ".join(names + ["$A"]), pair=" ".join(names + ["$A", "$B:1"]),
        special_tokens=sorted(set(zip(names, ids)), key=lambda x: x[1]))


def backend_tokenizer(petrun_tok):
    """The `tokenizers.Tokenizer` behind (or converted from) a petrun tokenizer."""
    backend = getattr(petrun_tok, "_tok", None)   # petrun.data.bpe.HFTokenizer
    if backend is not None:
        from tokenizers import Tokenizer
        return Tokenizer.from_str(backend.to_str())   # a copy: petrun's stays as it was
    extra = list(getattr(petrun_tok, "SPECIALS", ()))
    return sentencepiece_to_tokenizers(petrun_tok.model_file, extra)


def _write_json(path: Path, data: dict) -> None:
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_hf_tokenizer(tok_cfg: dict, folder: str | Path, *, template: str | None,
                       model_max_length: int | None = None) -> TokenizerFiles:
    """Write the tokenizer files of `tok_cfg` (a processor.tokenizer section) into `folder`; the
    chat template is petrun's `template` (petrun.data.chat_jinja) for this tokenizer's prefix."""
    from petrun.data.chat_jinja import jinja_template

    folder = Path(folder)
    petrun_tok = load_tokenizer(tok_cfg)
    tok = backend_tokenizer(petrun_tok)
    _set_prefix(tok, petrun_tok)
    files = []
    tok.save(str(folder / "tokenizer.json"))
    files.append("tokenizer.json")
    if petrun_tok.family in ("llama", "glm2"):   # SentencePiece: the source model as well
        copies = [(petrun_tok.files[0], "tokenizer.model")]
    elif petrun_tok.family == "gpt2":
        copies = list(zip(petrun_tok.files, ("vocab.json", "merges.txt")))
    else:
        copies = []   # read from a tokenizer.json: written above
    for src, name in copies:
        shutil.copyfile(src, folder / name)
        files.append(name)
    piece = petrun_tok.id_to_piece
    specials = {"bos_token": piece(petrun_tok.bos_id), "eos_token": piece(petrun_tok.eos_id),
                "unk_token": piece(petrun_tok.unk_id), "pad_token": piece(petrun_tok.pad_id)}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **specials,
              "clean_up_tokenization_spaces": False,
              "model_max_length": int(model_max_length) if model_max_length else None}
    if not config["model_max_length"]:
        del config["model_max_length"]
    if template is not None:
        prefix = "".join(piece(i) for i in petrun_tok.prefix_ids)
        config["chat_template"] = jinja_template(template, prefix)
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", specials)
    files += ["tokenizer_config.json", "special_tokens_map.json"]
    return TokenizerFiles(files, template, petrun_tok)
