"""ChatGLM2's SentencePiece specials, Hugging Face tokenizer.json and GPT2 vocab.json + merges.txt,
all from local files (the BPE files are trained in conftest.py with `tokenizers`)."""
from __future__ import annotations

import json
import os

import pytest

from petrun.data.tokenizer import (ChatGLM2Tokenizer, Tokenizer, load_tokenizer,
                                   tokenizer_config_for_path)
from petrun.errors import UserError

TEXT = "The lazy fox was released in 2011. Senjō no Valkyria!"


def test_chatglm2_specials_follow_the_sentencepiece_pieces(demo_dir):
    model = os.path.join(demo_dir, "tokenizer.model")
    tok = load_tokenizer({"type": "ChatGLM2Tokenizer", "vocab_file": model,
                          "bos_token": "<sop>", "eos_token": "<eop>", "pad_token": "<pad>"})
    assert isinstance(tok, ChatGLM2Tokenizer) and isinstance(tok, Tokenizer)
    # [MASK] [gMASK] [sMASK] sop eop after the 512 pieces: with ChatGLM2's 64789-piece model
    # this numbering gives [gMASK] 64790 and sop 64792 (reference §7.2).
    assert tok.special_ids == {"[MASK]": 512, "[gMASK]": 513, "[sMASK]": 514, "sop": 515, "eop": 516}
    assert tok.prefix_ids == [513, 515] and tok.vocab_size == 517
    # bos/eos/pad are the SentencePiece ones whatever the YAML calls them.
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (1, 2, 0, 0)
    ids = tok.encode("hello world")
    assert tok.decode(tok.prefix_ids + ids + [tok.eos_id]) == "hello world"
    assert tok.id_to_piece(513) == "[gMASK]" and tok.family == "glm2"


def test_tokenizer_json(bpe_files):
    tok = load_tokenizer({"tokenizer_file": bpe_files["tokenizer_json"]})
    assert isinstance(tok, Tokenizer) and tok.family == "hf"
    # No <s>/</s> in this vocabulary: '<|endoftext|>' is found for bos, eos and unk; pad = unk.
    assert tok.bos_id == tok.eos_id == tok.unk_id == tok.pad_id == 0
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT and 0 not in ids
    assert tok.encode(TEXT, add_bos=True, add_eos=True) == [0] + ids + [0]
    assert tok.files == [bpe_files["tokenizer_json"]]


def test_gpt2_bpe_matches_tokenizers_and_transformers(bpe_files):
    from tokenizers import Tokenizer as HF

    tok = load_tokenizer({"type": "GPT2Tokenizer", "vocab_file": bpe_files["vocab"],
                          "merges_file": bpe_files["merges"]})
    assert tok.family == "gpt2" and tok.prefix_ids == []
    assert tok.bos_id == tok.eos_id == tok.pad_id == tok.unk_id == 0   # all '<|endoftext|>'
    text = TEXT + "<|endoftext|>" + "next doc"
    ids = tok.encode(text)
    assert ids == HF.from_file(bpe_files["tokenizer_json"]).encode(text).ids
    assert ids.count(0) == 1 and tok.decode(ids) == text
    transformers = pytest.importorskip("transformers")
    ref = transformers.GPT2Tokenizer(bpe_files["vocab"], bpe_files["merges"])
    assert ids == ref(text)["input_ids"]


def test_tokenizer_config_for_path(bpe_files, demo_dir):
    model = os.path.join(demo_dir, "tokenizer.model")
    assert tokenizer_config_for_path(model) == {"type": "LlamaTokenizer", "vocab_file": model}
    assert tokenizer_config_for_path(model, "ChatGLM2Tokenizer")["type"] == "ChatGLM2Tokenizer"
    assert tokenizer_config_for_path(bpe_files["tokenizer_json"]) == {
        "tokenizer_file": bpe_files["tokenizer_json"]}
    assert tokenizer_config_for_path(bpe_files["vocab"]) == {
        "type": "GPT2Tokenizer", "vocab_file": bpe_files["vocab"], "merges_file": bpe_files["merges"]}
    # a folder: tokenizer.json is preferred
    assert "tokenizer_file" in tokenizer_config_for_path(bpe_files["dir"])
    with pytest.raises(UserError):
        tokenizer_config_for_path(os.path.join(bpe_files["dir"], "nope.model"))


def test_bpe_errors_name_key_and_file(bpe_files, tmp_path):
    with pytest.raises(UserError) as e:
        load_tokenizer({"type": "GPT2Tokenizer", "vocab_file": bpe_files["vocab"],
                        "merges_file": str(tmp_path / "merges.txt")})
    assert e.value.key == "processor.tokenizer.merges_file" and e.value.fix
    with pytest.raises(UserError) as e:   # merges.txt defaults to the vocab's folder
        load_tokenizer({"type": "GPT2Tokenizer", "vocab_file": str(tmp_path / "vocab.json")})
    assert e.value.key == "processor.tokenizer.vocab_file"
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps({"model": {"type": "nonsense"}}))
    with pytest.raises(UserError) as e:
        load_tokenizer({"tokenizer_file": str(bad)})
    assert e.value.key == "processor.tokenizer.tokenizer_file" and e.value.file == str(bad)
    with pytest.raises(UserError) as e:
        load_tokenizer({"tokenizer_file": bpe_files["tokenizer_json"], "bos_token": "<s>"})
    assert e.value.key == "processor.tokenizer.bos_token"


def test_train_tokenizer_reproduces_the_demo_model(demo_dir, tmp_path):
    from petrun.data.sp_train import train_tokenizer_file

    path, n = train_tokenizer_file(os.path.join(demo_dir, "alpaca_demo.json"), str(tmp_path), 512)
    assert path == str(tmp_path / "tokenizer.model") and n == 300   # one round per record
    with open(path, "rb") as f, open(os.path.join(demo_dir, "tokenizer.model"), "rb") as g:
        assert f.read() == g.read()
    with pytest.raises(UserError) as e:   # exists
        train_tokenizer_file(os.path.join(demo_dir, "alpaca_demo.json"), str(tmp_path), 512)
    assert "--overwrite" in e.value.fix

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one two three\nfour five six\n" * 20)
    with pytest.raises(UserError) as e:
        train_tokenizer_file(str(corpus), str(tmp_path / "small.model"), 5000)
    assert "lower --vocab-size" in e.value.fix
    with pytest.raises(UserError) as e:   # byte fallback alone needs 259 pieces
        train_tokenizer_file(str(corpus), str(tmp_path / "small.model"), 60)
    assert "raise --vocab-size" in e.value.fix
    path, n = train_tokenizer_file(str(corpus), str(tmp_path / "small.model"), 280)
    tok = load_tokenizer({"vocab_file": path})
    assert n == 40 and tok.vocab_size == 280 and tok.decode(tok.encode("six two")) == "six two"
