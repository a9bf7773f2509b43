"""Issue 19, the last data pieces: a folder of bare Parquet shards as a dataset, OpenAI messages'
per-message `weight`, and the template a raw dataset is rendered with (what a run records).

Expected labels are computed by hand from tokenizer.encode of the vicuna pieces written out in
tests/data/test_chat_formats.py (MindFormers' qa rule); Parquet files are written with pyarrow."""
from __future__ import annotations

import json
import os

import pytest

from petrun.data import prepare as prep
from petrun.data.ondemand import RawText
from petrun.data.records import read_records
from petrun.errors import UserError
from tests.data.test_chat_formats import CHATS, IGN, SEQ, messages, vicuna_hand


@pytest.fixture
def tok_cfg(demo_dir):
    return {"type": "LlamaTokenizer", "vocab_file": os.path.join(demo_dir, "tokenizer.model")}


def _parquet(path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(records), path)


def test_a_folder_of_parquet_shards_is_read_in_name_order(tmp_path, demo_dir, demo_tokenizer):
    from petrun.data import loader

    folder = tmp_path / "shards"
    folder.mkdir()
    first, second = messages()
    # written second-name first, with a stray non-Parquet file beside them
    _parquet(folder / "train-00001-of-00002.parquet", [second])
    _parquet(folder / "train-00000-of-00002.parquet", [first])
    (folder / "README.md").write_text("not data")
    assert [r.obj for r in read_records(str(folder))[0]] == [first, second]

    raw = RawText({"type": "LlamaTokenizer",
                   "vocab_file": os.path.join(demo_dir, "tokenizer.model")}, str(tmp_path / "c"))
    src = loader.open_dataset(str(folder), seq_length=SEQ, batch_size=2, raw=raw)
    assert src._arrays["labels"].tolist() == [vicuna_hand(demo_tokenizer, s, p)[1]
                                             for s, p in CHATS]
    assert src.info["template"] == "vicuna"
    # the cache key covers every shard: changing one tokenizes again
    _parquet(folder / "train-00001-of-00002.parquet", [first])
    src = loader.open_dataset(str(folder), seq_length=SEQ, batch_size=2, raw=raw)
    assert src._arrays["labels"].tolist() == [vicuna_hand(demo_tokenizer, *CHATS[0])[1]] * 2


def test_an_empty_folder_is_not_a_table(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError):
        read_records(str(tmp_path / "empty"))


def _weighted(w1, w2):
    first = {"role": "assistant", "content": "5"}
    second = {"role": "assistant", "content": "8"}
    if w1 is not None:
        first["weight"] = w1
    if w2 is not None:
        second["weight"] = w2
    return {"messages": [{"role": "system", "content": "You are terse."},
                         {"role": "user", "content": "Add 2 and 3."}, first,
                         {"role": "user", "content": "And 4 and 4?"}, second]}


def _hand_weighted(tok, trained):
    """vicuna_hand's rounds, a round whose answer has weight 0 masked whole (its eos too)."""
    ids, labels = [1], [IGN]
    for i, ((q, a), keep) in enumerate(zip([("Add 2 and 3.", "5"), ("And 4 and 4?", "8")],
                                           trained)):
        prompt = ("You are terse. " if i == 0 else "") + f"USER: {q} ASSISTANT:"
        body = tok.encode(f"{prompt} {a}")
        n = len(tok.encode(prompt + " ")) - 1
        ids += body + [2]
        labels += ([IGN] * n + body[n:] + [2]) if keep else [IGN] * (len(body) + 1)
    pad = SEQ + 1 - len(ids)
    return ids + [0] * pad, labels + [IGN] * pad


@pytest.mark.parametrize("container", ("jsonl", "parquet"))
def test_message_weight_zero_is_not_trained_on(tmp_path, demo_tokenizer, tok_cfg, container):
    records = [_weighted(0, 1), _weighted(1, 0), _weighted(None, None), _weighted(0, 0)]
    src = tmp_path / f"w.{container}"
    if container == "parquet":
        _parquet(src, records)   # weight becomes a nullable column: null on the other messages
    else:
        src.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out.jsonl"
    report = prep.prepare("messages", str(src), str(out), tokenizer=tok_cfg, seq_length=SEQ,
                          overwrite=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    want = [_hand_weighted(demo_tokenizer, t)
            for t in ((False, True), (True, False), (True, True), (False, False))]
    assert [(r["input_ids"], r["labels"]) for r in rows] == [tuple(w) for w in want]
    # the ids do not depend on the weights, only the labels do
    assert len({tuple(r["input_ids"]) for r in rows}) == 1
    assert report.fully_masked == 1     # the record with nothing to learn is counted


@pytest.mark.parametrize("message,why", [
    ({"role": "user", "content": "hi", "weight": 0}, "only assistant messages have one"),
    ({"role": "assistant", "content": "hi", "weight": 2}, "must be 0 or 1, got 2"),
    ({"role": "assistant", "content": "hi", "weight": "0"}, "must be 0 or 1, got '0'"),
])
def test_a_bad_weight_is_a_bad_record_named(tmp_path, tok_cfg, message, why):
    from petrun.data import formats
    rec = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    rec["messages"][0 if message["role"] == "user" else 1] = message
    turns, reason = formats.messages_turns(rec)
    assert turns is None and why in reason


def test_the_template_a_raw_format_is_rendered_with():
    """What a run records (formats.training_template): chat data on a family whose default is
    alpaca → vicuna; alpaca records → alpaca; a configured template always."""
    llama = RawText(None, family_template="alpaca")
    assert [llama.template_for(f) for f in ("messages", "sharegpt", "alpaca", "advertisegen")] \
        == ["vicuna", "vicuna", "alpaca", None]
    assert RawText(None, family_template="glm2").template_for("messages") == "glm2"
    assert RawText(None, chat_template="none").template_for("alpaca") == "none"
