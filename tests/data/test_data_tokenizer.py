from __future__ import annotations

import os

import pytest

from petrun.data.tokenizer import SentencePieceTokenizer, Tokenizer, load_tokenizer
from petrun.errors import UserError


def test_llama_special_ids(demo_tokenizer):
    tok = demo_tokenizer
    assert isinstance(tok, Tokenizer)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 0)
    assert [tok.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert tok.vocab_size == 512


def test_encode_decode_round_trip(demo_tokenizer):
    tok = demo_tokenizer
    text = "Reverse the letters of the word: garden → nedrag, 42 é"
    ids = tok.encode(text)
    assert tok.decode(ids) == text   # byte fallback: nothing is lost, not even "→"
    assert 0 not in ids
    assert tok.encode(text, add_bos=True, add_eos=True) == [1] + ids + [2]
    assert tok.encode(text, add_eos=True)[-1] == 2 and tok.encode(text, add_bos=True)[0] == 1
    # labels carry -100 markers; decode skips them
    assert tok.decode([-100, -100] + ids) == text


def test_load_tokenizer_from_processor_section(demo_dir):
    tok = load_tokenizer({"type": "LlamaTokenizer",
                          "vocab_file": os.path.join(demo_dir, "tokenizer.model"),
                          "pad_token": "<unk>"})
    assert tok.pad_id == 0 and tok.vocab_size == 512


def test_load_tokenizer_errors(tmp_path, demo_dir):
    with pytest.raises(UserError) as e:
        load_tokenizer({"type": "LlamaTokenizer"})
    assert e.value.key == "processor.tokenizer.vocab_file" and e.value.fix

    missing = str(tmp_path / "nope" / "tokenizer.model")
    with pytest.raises(UserError) as e:
        load_tokenizer({"type": "LlamaTokenizer", "vocab_file": missing})
    assert e.value.file == missing and e.value.key == "processor.tokenizer.vocab_file"
    assert missing in str(e.value) and "Fix:" in str(e.value)

    corrupt = tmp_path / "tokenizer.model"
    corrupt.write_text('{"this": "is tokenizer.json, not a sentencepiece model"}')
    with pytest.raises(UserError) as e:
        load_tokenizer({"vocab_file": str(corrupt)})
    assert e.value.file == str(corrupt) and e.value.key == "processor.tokenizer.vocab_file"

    with pytest.raises(UserError) as e:
        load_tokenizer({"type": "BertTokenizer", "vocab_file": "x"})
    assert e.value.key == "processor.tokenizer.type"

    with pytest.raises(UserError) as e:
        SentencePieceTokenizer(os.path.join(demo_dir, "tokenizer.model"), pad_token="<pad>")
    assert e.value.key == "processor.tokenizer.pad_token"
