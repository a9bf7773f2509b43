"""Raw alpaca / AdvertiseGen JSON as dataset_dir: tokenized on the fly into a cache keyed by the
data, the tokenizer and the sample length; a second run reuses the cache."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from petrun.data import loader
from petrun.data import prepare as prep
from petrun.data.ondemand import RawText
from petrun.errors import UserError

SEQ = 256


@pytest.fixture
def raw_alpaca(tmp_path, demo_dir):
    records = json.load(open(os.path.join(demo_dir, "alpaca_demo.json")))[:32]
    path = tmp_path / "alpaca_raw.json"
    path.write_text(json.dumps(records, indent=1))
    return path


@pytest.fixture
def raw(tmp_path, demo_dir):
    return RawText({"type": "LlamaTokenizer",
                    "vocab_file": os.path.join(demo_dir, "tokenizer.model")},
                   cache_dir=str(tmp_path / "cache"))


def _bundled(demo_dir, name, n):
    with open(os.path.join(demo_dir, name)) as f:
        rows = [json.loads(next(f)) for _ in range(n)]
    return {c: np.array([r[c] for r in rows], np.int32) for c in ("input_ids", "labels")}


def _all_batches(source):
    got = list(source.epoch(1).create_tuple_iterator(num_epochs=1, output_numpy=True))
    return np.concatenate([b[0] for b in got]), np.concatenate([b[1] for b in got])


def test_raw_alpaca_is_tokenized_then_cached(raw_alpaca, raw, demo_dir, monkeypatch):
    first = loader.open_dataset(raw_alpaca, seq_length=SEQ, batch_size=4, raw=raw)
    meta = first.info["raw"]
    assert meta["reused"] is False and meta["samples"] == 32 and meta["bad"] == 0
    assert os.path.dirname(meta["cache"]) == raw.cache_dir and os.path.isfile(meta["cache"])
    ids, labels = _all_batches(first)
    want = _bundled(demo_dir, "alpaca_demo_seq256.jsonl", 32)   # made by the same rules
    np.testing.assert_array_equal(ids, want["input_ids"])
    np.testing.assert_array_equal(labels, want["labels"])
    assert first.files == [str(raw_alpaca)]

    # Second run: nothing is tokenized again.
    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again despite the cache")

    monkeypatch.setattr(prep, "stream_samples", no_tokenizing)
    again = loader.open_dataset(raw_alpaca, seq_length=SEQ, batch_size=4, raw=raw)
    assert again.info["raw"]["reused"] is True and again.info["raw"]["cache"] == meta["cache"]
    np.testing.assert_array_equal(_all_batches(again)[0], ids)
    info = loader.check_dataset(raw_alpaca, seq_length=SEQ, batch_size=4, raw=raw)
    assert info["sample_length"] == SEQ + 1 and info["num_samples"] == 32


def test_cache_key_follows_data_tokenizer_and_length(raw_alpaca, raw, demo_dir):
    cache = raw.cache_dir
    loader.open_dataset(raw_alpaca, seq_length=SEQ, batch_size=4, raw=raw)
    loader.open_dataset(raw_alpaca, seq_length=128, batch_size=4, raw=raw)
    assert len(os.listdir(cache)) == 2
    records = json.loads(raw_alpaca.read_text())
    raw_alpaca.write_text(json.dumps(records[:31]))
    src = loader.open_dataset(raw_alpaca, seq_length=SEQ, batch_size=4, raw=raw)
    assert src.num_samples == 31 and len(os.listdir(cache)) == 3
    # The key hashes the tokenizer's content and resolved ids, not its path or YAML spelling.
    model = open(os.path.join(demo_dir, "tokenizer.model"), "rb").read()
    other = os.path.join(os.path.dirname(cache), "other.model")
    with open(other, "wb") as f:
        f.write(model)
    same_bytes = RawText({"vocab_file": other}, cache_dir=cache)
    assert loader.open_dataset(raw_alpaca, seq_length=SEQ, batch_size=4,
                               raw=same_bytes).info["raw"]["reused"] is True   # content, not path
    assert len(os.listdir(cache)) == 3
    glm = RawText({"type": "ChatGLM2Tokenizer", "vocab_file": other}, cache_dir=cache)
    assert loader.open_dataset(raw_alpaca, seq_length=SEQ, batch_size=4,
                               raw=glm).info["raw"]["reused"] is False
    with open(other, "wb") as f:   # another model under the same name
        f.write(open(os.path.join(demo_dir, "tokenizer.model"), "rb").read().replace(
            b"\xe2\x96\x81the", b"\xe2\x96\x81thE", 1))
    assert loader.open_dataset(raw_alpaca, seq_length=SEQ, batch_size=4,
                               raw=same_bytes).info["raw"]["reused"] is False
    assert len(os.listdir(cache)) == 5
    assert not any(f.startswith(".") for f in os.listdir(cache))   # no temporary leftovers


def test_raw_json_without_a_tokenizer_is_refused(raw_alpaca):
    with pytest.raises(UserError) as e:
        loader.open_dataset(raw_alpaca, seq_length=SEQ, batch_size=4)
    assert "raw text" in e.value.message and "petrun data prepare alpaca" in e.value.fix
    with pytest.raises(UserError) as e:
        loader.open_dataset(raw_alpaca, seq_length=SEQ, batch_size=4,
                            raw=RawText({"type": "LlamaTokenizer"}))
    assert e.value.key == "processor.tokenizer.vocab_file"


def test_glm2_alpaca_on_the_fly_is_shifted(raw_alpaca, raw, demo_dir):
    src = loader.open_dataset(raw_alpaca, seq_length=SEQ, batch_size=4, extra_tokens=0, raw=raw)
    ids, labels = _all_batches(src)
    want = _bundled(demo_dir, "alpaca_demo_glm2_seq256.jsonl", 32)
    np.testing.assert_array_equal(ids, want["input_ids"])
    np.testing.assert_array_equal(labels, want["labels"])


def test_raw_advertisegen_with_bad_lines(tmp_path, demo_dir, caplog):
    path = tmp_path / "train.json"
    good = [{"content": f"类型#裙*颜色#{c}", "summary": f"A {c} dress."}
            for c in ("红色", "蓝色", "白色", "黑色")]
    lines = [json.dumps(r, ensure_ascii=False) for r in good]
    lines.insert(2, "{broken")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = RawText({"type": "ChatGLM2Tokenizer",
                   "vocab_file": os.path.join(demo_dir, "tokenizer.model")},
                  cache_dir=str(tmp_path / "cache"), max_source_length=64, max_target_length=16)
    src = loader.open_dataset(path, seq_length=81, batch_size=2, extra_tokens=0, raw=raw)
    meta = src.info["raw"]
    assert src.num_samples == 4 and meta["bad"] == 1 and "line 3" in meta["bad_preview"]
    assert "skipped 1 bad record(s) of 5: line 3: invalid JSON" in caplog.text   # not silent
    ids, labels = _all_batches(src)
    assert ids.shape == labels.shape == (4, 81) and (ids[:, :2] == [513, 515]).all()
    with pytest.raises(UserError) as e:   # lengths that disagree with the model's seq_length
        loader.open_dataset(path, seq_length=100, batch_size=2, extra_tokens=0, raw=raw)
    assert e.value.key == "model.model_config.seq_length"


def test_raw_text_from_config():
    from petrun.config import load_config

    cfg = load_config("configs/llama2/lora_llama2_tiny.yaml")
    raw = RawText.from_config(cfg)
    assert raw.tokenizer["vocab_file"] == "data/demo/tokenizer.model" and raw.cache_dir is None
    glm = RawText.from_config(load_config("configs/glm2/lora_glm2_tiny.yaml"))
    assert (glm.max_source_length, glm.max_target_length) == (127, 128)
    assert glm.tokenizer["type"] == "ChatGLM2Tokenizer"
