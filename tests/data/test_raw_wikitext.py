"""Raw wikitext as dataset_dir (the seed's `train_dataset='/data/wikitext-2/train'`): the folder
of an unpacked wikitext-2 archive, or one .tokens file, is tokenized on the fly exactly as
`petrun data prepare wikitext` writes it; training reads the train split, evaluation the valid
one; without a tokenizer, or for ChatGLM2, a clear error."""
import json

import numpy as np
import pytest

from petrun.data import loader
from petrun.data import prepare as prep
from petrun.data.ondemand import RawText
from petrun.errors import UserError

SEQ = 16
TEXT = {"train": " = Title = \n\n = = Part = = \n\n" + " the quick brown fox jumps over the lazy "
                 "dog . \n" * 30,
        "valid": " = Other = \n\n" + " it met with positive sales in japan . \n" * 20}


@pytest.fixture
def wiki(tmp_path):
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    for split, text in TEXT.items():
        (folder / f"wiki.{split}.tokens").write_text(text, encoding="utf-8")
    (folder / "wiki.test.tokens").write_text(TEXT["valid"], encoding="utf-8")
    return folder


@pytest.fixture
def raw(tmp_path, bpe_files):
    return RawText({"type": "GPT2Tokenizer", "vocab_file": bpe_files["vocab"],
                    "merges_file": bpe_files["merges"]}, cache_dir=str(tmp_path / "cache"))


def _offline(path, raw, out):
    prep.prepare("wikitext", str(path), str(out), tokenizer=raw.tokenizer, seq_length=SEQ)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return np.array([r["input_ids"] for r in rows], np.int32)


def _ids(source):
    batches = source.epoch(1).create_tuple_iterator(num_epochs=1, output_numpy=True)
    return np.concatenate([b[0] for b in batches])


@pytest.mark.parametrize("split,key", [("train", loader.DATASET_DIR_KEY),
                                       ("valid", "eval_dataset.data_loader.dataset_dir")])
def test_folder_is_tokenized_like_data_prepare(wiki, raw, tmp_path, split, key):
    source = loader.open_dataset(wiki, seq_length=SEQ, batch_size=1, raw=raw, key=key,
                                 columns=["input_ids", "labels"])
    want = _offline(wiki / f"wiki.{split}.tokens", raw, tmp_path / f"{split}.jsonl")
    assert len(want) > 2 and want.shape[1] == SEQ + 1
    np.testing.assert_array_equal(_ids(source), want)
    assert source.files == [str(wiki / f"wiki.{split}.tokens")]


def test_single_file_and_lone_file_folder(wiki, raw, tmp_path):
    want = _offline(wiki / "wiki.valid.tokens", raw, tmp_path / "v.jsonl")
    source = loader.open_dataset(wiki / "wiki.valid.tokens", seq_length=SEQ, batch_size=1, raw=raw)
    np.testing.assert_array_equal(_ids(source), want)
    lone = tmp_path / "train"        # the seed's /data/wikitext-2/train holding one file
    lone.mkdir()
    (lone / "wiki.valid.tokens").write_bytes((wiki / "wiki.valid.tokens").read_bytes())
    source = loader.open_dataset(lone, seq_length=SEQ, batch_size=1, raw=raw)
    np.testing.assert_array_equal(_ids(source), want)


def test_refusals(wiki, raw):
    with pytest.raises(UserError, match="(?s)raw wikitext, not tokenized.*petrun data prepare wikitext"):
        loader.open_dataset(wiki, seq_length=SEQ, batch_size=1)
    with pytest.raises(UserError, match="ChatGLM2 trains on pre-shifted labels"):
        loader.open_dataset(wiki, seq_length=SEQ, batch_size=1, raw=raw, extra_tokens=0)
    with pytest.raises(UserError, match="raw wikitext"):
        loader.inspect_dataset(wiki)
