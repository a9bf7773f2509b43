"""`petrun data prepare alpaca` (the library side): golden samples, MindFormers' MindRecord schema,
sharding, bad records, atomic output."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from petrun.data import alpaca
from petrun.data import prepare as prep
from petrun.data.mindrecord import read_mindrecord, read_schema
from petrun.errors import UserError

SEQ = 200
IGN = -100
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
          "gives helpful, detailed, and polite answers to the user's questions.")
RECORDS = [
    {"instruction": "Reverse the letters of the word.", "input": "garden", "output": "nedrag"},
    {"instruction": "What is 12 plus 30?", "input": "", "output": "42"},
    {"instruction": "Give the opposite of the word.", "input": "hot", "output": "cold"},
    {"instruction": "Write a short greeting.", "output": "Hello, friend!"},
]


@pytest.fixture
def tok_cfg(demo_dir):
    return {"type": "LlamaTokenizer", "vocab_file": os.path.join(demo_dir, "tokenizer.model")}


def _write_json(path, records):
    path.write_text(json.dumps(records, indent=1))
    return str(path)


def _hand(tok, rec, seq_length):
    """The documented layout (reference §7.1), written out independently of alpaca.py."""
    if rec.get("input"):
        prompt = ("Below is an instruction that describes a task, paired with an input that "
                  "provides further context. Write a response that appropriately completes the "
                  f"request.\n\n### Instruction:\n{rec['instruction']}\n\n### Input:\n"
                  f"{rec['input']}\n\n### Response:")
    else:
        prompt = ("Below is an instruction that describes a task. Write a response that "
                  "appropriately completes the request.\n\n### Instruction:\n"
                  f"{rec['instruction']}\n\n### Response:")
    head = f"{SYSTEM} USER: {prompt} ASSISTANT:"
    body = tok.encode(f"{head} {rec['output']}")
    n_prompt = len(tok.encode(head + " ")) - 1
    ids = [1] + body + [2]
    labels = [IGN] * (1 + n_prompt) + body[n_prompt:] + [2]
    pad = seq_length + 1 - len(ids)
    return (ids + [0] * pad)[:seq_length + 1], (labels + [IGN] * pad)[:seq_length + 1]


def test_alpaca_to_mindrecord_golden(tmp_path, tok_cfg, demo_tokenizer):
    src = _write_json(tmp_path / "alpaca.json", RECORDS)
    out = str(tmp_path / "out" / "alpaca.mindrecord")
    report = prep.prepare("alpaca", src, out, tokenizer=tok_cfg, seq_length=SEQ)
    assert (report.written, report.records, report.bad, report.sample_length) == (4, 4, [], SEQ + 1)
    assert report.files == [out] and os.path.isfile(out + ".db")

    # MindFormers' llama_preprocess schema: int32 [-1] input_ids and labels, schema name "qa".
    assert read_schema(out) == {"input_ids": {"type": "int32", "shape": [-1]},
                                "labels": {"type": "int32", "shape": [-1]}}
    from mindspore.mindrecord import FileReader
    reader = FileReader(out)
    assert reader._header._header.get_schema_by_id(0).get_desc() == "qa"
    reader.close()

    rows = read_mindrecord(out)
    assert len(rows) == 4
    for rec, row in zip(RECORDS, rows):
        want_ids, want_labels = _hand(demo_tokenizer, rec, SEQ)
        assert row["input_ids"].dtype == np.int32 and row["labels"].dtype == np.int32
        assert row["input_ids"].tolist() == want_ids
        assert row["labels"].tolist() == want_labels
        kept = [t for t in want_labels if t != IGN]
        assert demo_tokenizer.decode(kept) == rec["output"] and kept[-1] == 2


def test_truncated_samples_are_counted(tmp_path, tok_cfg):
    long = {"instruction": "Write the text in capital letters.", "input": "apple",
            "output": "APPLE TABLE " * 20}
    src = _write_json(tmp_path / "a.json", RECORDS[:2] + [long])
    report = prep.prepare("alpaca", src, str(tmp_path / "a.jsonl"), tokenizer=tok_cfg,
                          seq_length=SEQ)
    assert report.truncated == 1 and report.written == 3
    rows = [json.loads(line) for line in open(tmp_path / "a.jsonl")]
    assert all(len(r["input_ids"]) == len(r["labels"]) == SEQ + 1 for r in rows)


def test_two_shards_cover_the_data_disjointly(tmp_path, tok_cfg, demo_dir):
    import mindspore.dataset as ds

    records = json.load(open(os.path.join(demo_dir, "alpaca_demo.json")))[:40]
    src = _write_json(tmp_path / "a.json", records)
    out = str(tmp_path / "alpaca.mindrecord")
    report = prep.prepare("alpaca", src, out, tokenizer=tok_cfg, seq_length=SEQ, num_shards=2)
    assert report.files == [out + "0", out + "1"]
    assert all(os.path.isfile(f) and os.path.isfile(f + ".db") for f in report.files)
    assert not os.path.exists(out)

    def rows(**kw):
        data = ds.MindDataset(out + "0", shuffle=False, **kw)   # one path loads the whole set
        return [r["input_ids"].tobytes() for r in data.create_dict_iterator(output_numpy=True)]

    everything = rows()
    assert len(everything) == 40 == len(set(everything))
    parts = [rows(num_shards=2, shard_id=i) for i in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 20
    assert not set(parts[0]) & set(parts[1]) and set(parts[0]) | set(parts[1]) == set(everything)

    # The same content as one file, in input order.
    single = str(tmp_path / "single.mindrecord")
    prep.prepare("alpaca", src, single, tokenizer=tok_cfg, seq_length=SEQ)
    assert sorted(everything) == sorted(r["input_ids"].tobytes() for r in read_mindrecord(single))


def test_bad_records_are_skipped_and_reported_by_line(tmp_path, tok_cfg):
    lines = [json.dumps(RECORDS[0]),                                  # 1 ok
             '{"instruction": "Broken", "output": ',                  # 2 invalid JSON
             json.dumps({"instruction": "No output."}),               # 3 missing field
             "",                                                      # 4 blank: ignored
             json.dumps({"instruction": 7, "output": "x"}),           # 5 wrong type
             json.dumps({"instruction": "Empty.", "output": "  "}),   # 6 empty text
             json.dumps(["not", "an", "object"]),                     # 7 wrong type
             json.dumps(RECORDS[1])]                                  # 8 ok
    src = tmp_path / "a.jsonl"
    src.write_text("\n".join(lines) + "\n")
    report = prep.prepare("alpaca", str(src), str(tmp_path / "a.mindrecord"), tokenizer=tok_cfg,
                          seq_length=SEQ)
    assert report.written == 2 and report.records == 7
    assert [b.line for b in report.bad] == [2, 3, 5, 6, 7]
    reasons = [b.reason for b in report.bad]
    assert "invalid JSON" in reasons[0] and "output" in reasons[1]
    assert "string" in reasons[2] and "empty" in reasons[3] and "object" in reasons[4]
    assert "line 2:" in report.bad_preview() and "line 7:" in report.bad_preview()

    # In a JSON list the line is where the element starts.
    listed = tmp_path / "list.json"
    listed.write_text('[\n  {"instruction": "A", "output": "b"},\n  {"instruction": "A"},\n'
                      '  {"instruction": "B",\n   "output": ""}\n]\n')
    report = prep.prepare("alpaca", str(listed), str(tmp_path / "l.jsonl"), tokenizer=tok_cfg,
                          seq_length=SEQ)
    assert [(b.line, b.reason) for b in report.bad] == [
        (3, "missing field 'output'"), (4, "field 'output' is empty")]
    assert "record 2 (line 3):" in report.bad_preview()

    # A list on one line: records are told apart by their position, not by "line 1".
    one_line = tmp_path / "one.json"
    one_line.write_text(json.dumps([RECORDS[0], {"instruction": "A"}, RECORDS[1],
                                    {"output": "b"}]))
    report = prep.prepare("alpaca", str(one_line), str(tmp_path / "o.jsonl"), tokenizer=tok_cfg,
                          seq_length=SEQ)
    assert report.written == 2
    assert [b.where for b in report.bad] == ["record 2 (line 1)", "record 4 (line 1)"]
    assert report.bad_preview().startswith("record 2 (line 1): missing field 'output'; "
                                           "record 4 (line 1): missing field")


def test_unusable_input_is_a_user_error_and_writes_nothing(tmp_path, tok_cfg):
    out = tmp_path / "o.mindrecord"
    src = tmp_path / "bad.jsonl"
    src.write_text('{"instruction": "x"}\n{"output": "y"}\n')
    with pytest.raises(UserError) as e:
        prep.prepare("alpaca", str(src), str(out), tokenizer=tok_cfg, seq_length=SEQ)
    assert "line 1" in e.value.message and e.value.file == str(src)
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"instruction": "x", "output": "y"},\n{"instruction": oops}\n]')
    with pytest.raises(UserError) as e:
        prep.prepare("alpaca", str(broken), str(out), tokenizer=tok_cfg, seq_length=SEQ)
    assert e.value.message.startswith("line 3")
    with pytest.raises(UserError) as e:
        prep.prepare("alpaca", str(src), str(tmp_path / "o.txt"), tokenizer=tok_cfg, seq_length=SEQ)
    assert ".mindrecord" in e.value.message
    with pytest.raises(UserError):
        prep.prepare("alpaca", str(tmp_path / "missing.json"), str(out), tokenizer=tok_cfg,
                     seq_length=SEQ)
    with pytest.raises(UserError) as e:
        prep.prepare("alpaca", str(src), str(out), tokenizer=tok_cfg, seq_length=0)
    assert e.value.key == "model.model_config.seq_length"
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl", "broken.json"]


def test_existing_output_needs_overwrite_and_stale_shards_go(tmp_path, tok_cfg):
    src = _write_json(tmp_path / "a.json", RECORDS)
    out = str(tmp_path / "a.mindrecord")
    prep.prepare("alpaca", src, out, tokenizer=tok_cfg, seq_length=SEQ, num_shards=2)
    with pytest.raises(UserError) as e:
        prep.prepare("alpaca", src, out, tokenizer=tok_cfg, seq_length=SEQ)
    assert "--overwrite" in e.value.fix and e.value.file == out + "0"
    prep.prepare("alpaca", src, out, tokenizer=tok_cfg, seq_length=SEQ, overwrite=True)
    assert sorted(f for f in os.listdir(tmp_path) if "mindrecord" in f) == [
        "a.mindrecord", "a.mindrecord.db"]
    assert len(read_mindrecord(out)) == 4


def test_interrupted_write_leaves_nothing(tmp_path, tok_cfg, monkeypatch, demo_dir):
    records = json.load(open(os.path.join(demo_dir, "alpaca_demo.json")))[:40]
    src = _write_json(tmp_path / "a.json", records)
    real, calls = prep.process_chunk, []

    def interrupted(spec, tok, chunk):
        calls.append(len(chunk))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(spec, tok, chunk)

    monkeypatch.setattr(prep, "process_chunk", interrupted)
    for out in ("a.mindrecord", "a.jsonl"):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            prep.prepare("alpaca", src, str(tmp_path / out), tokenizer=tok_cfg, seq_length=SEQ)
        assert sorted(os.listdir(tmp_path)) == ["a.json"]


def test_workers_give_the_same_bytes(tmp_path, tok_cfg, demo_dir):
    records = json.load(open(os.path.join(demo_dir, "alpaca_demo.json")))[:60]
    src = _write_json(tmp_path / "a.json", records + [{"instruction": "bad"}])
    one = prep.prepare("alpaca", src, str(tmp_path / "one.jsonl"), tokenizer=tok_cfg,
                       seq_length=SEQ, workers=1)
    ticks = []
    two = prep.prepare("alpaca", src, str(tmp_path / "two.jsonl"), tokenizer=tok_cfg,
                       seq_length=SEQ, workers=2, on_start=ticks.append, progress=ticks.append)
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()
    assert one.written == two.written == 60 and [b.line for b in two.bad] == [b.line for b in one.bad]
    assert ticks[0] == 61 and sum(ticks[1:]) == 61 and len(ticks) > 2


def test_glm2_shift_matches_the_bundled_demo(tmp_path, tok_cfg, demo_dir):
    """Alpaca for ChatGLM2 (--config of a GLM2 model): seq_length tokens, labels pre-shifted."""
    src = os.path.join(demo_dir, "alpaca_demo.json")
    out = tmp_path / "glm2.jsonl"
    report = prep.prepare("alpaca", src, str(out), tokenizer=tok_cfg, seq_length=256,
                          shift_labels=True)
    assert report.sample_length == 256
    assert out.read_bytes() == open(os.path.join(demo_dir, "alpaca_demo_glm2_seq256.jsonl"), "rb").read()
    plain = alpaca.tokenize_alpaca_record(json.load(open(src))[0], _load(tok_cfg), 256)
    first = json.loads(out.read_text().splitlines()[0])
    assert first == {"input_ids": plain.input_ids[:-1], "labels": plain.labels[1:]}


def _load(cfg):
    from petrun.data.tokenizer import load_tokenizer
    return load_tokenizer(cfg)
