"""The bundled demo data exists, loads, and is what scripts/make_demo_data.py + alpaca.py produce."""
from __future__ import annotations

import json
import os

import numpy as np

from petrun.data import alpaca
from petrun.data.loader import build_dataset, inspect_dataset

SEQ = 256


def test_demo_files_exist_and_are_small(demo_dir):
    names = ["alpaca_demo.json", "tokenizer.model", f"alpaca_demo_seq{SEQ}.jsonl",
             f"alpaca_demo_glm2_seq{SEQ}.jsonl", f"pretrain_demo_seq{SEQ}.jsonl", "llama2_tiny_base.ckpt"]
    sizes = {n: os.path.getsize(os.path.join(demo_dir, n)) for n in names}
    assert all(s > 0 for s in sizes.values())
    # Everything a clone carries for the demo and the tests stays small (4 MB).
    assert sum(os.path.getsize(os.path.join(demo_dir, f)) for f in os.listdir(demo_dir)) < 4e6


def test_demo_alpaca_records_are_clean(demo_dir):
    records = alpaca.load_alpaca_records(os.path.join(demo_dir, "alpaca_demo.json"))
    assert 250 <= len(records) <= 350
    assert all(alpaca.check_alpaca_record(r) is None for r in records)
    assert len({(r["instruction"], r["input"]) for r in records}) == len(records)
    assert any(r["input"] == "" for r in records) and any(r["input"] for r in records)


def test_demo_tokenized_file_is_current_and_rarely_truncated(demo_dir, demo_tokenizer):
    records = alpaca.load_alpaca_records(os.path.join(demo_dir, "alpaca_demo.json"))
    prepared = alpaca.prepare_alpaca(records, demo_tokenizer, SEQ)
    assert not prepared.bad
    assert prepared.num_truncated <= 0.05 * len(records)
    assert prepared.num_fully_masked == 0

    path = os.path.join(demo_dir, f"alpaca_demo_seq{SEQ}.jsonl")
    with open(path) as f:
        stored = [json.loads(line) for line in f]
    assert len(stored) == len(prepared.samples)
    # Regenerating from the bundled records gives the bundled file: it is not stale.
    assert stored == [s.as_dict() for s in prepared.samples]


def test_demo_dataset_loads_with_seq_length_256(demo_dir, demo_tokenizer):
    path = os.path.join(demo_dir, f"alpaca_demo_seq{SEQ}.jsonl")
    info = inspect_dataset(path)
    assert info["sample_length"] == SEQ + 1 and info["columns"] == ["input_ids", "labels"]
    ids, labels = next(build_dataset(path, seq_length=SEQ, batch_size=8, shuffle=True, seed=1)
                       .create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert ids.shape == labels.shape == (8, SEQ + 1) and ids.dtype == np.int32
    assert (ids[:, 0] == demo_tokenizer.bos_id).all()
    assert ids.max() < demo_tokenizer.vocab_size
    # Every sample supervises its answer and eos, and nothing on padding.
    for row_ids, row_labels in zip(ids, labels):
        kept = row_labels[row_labels != -100]
        assert len(kept) >= 2 and kept[-1] == demo_tokenizer.eos_id
        assert (row_labels[row_ids == 0] == -100).all()


def test_demo_as_mindrecord_trains_the_same(demo_dir, demo_tokenizer, tmp_path):
    """alpaca.json → prepare → MindRecord gives the same batches as the bundled JSON lines."""
    from petrun.data.mindrecord import write_mindrecord

    records = alpaca.load_alpaca_records(os.path.join(demo_dir, "alpaca_demo.json"))[:16]
    prepared = alpaca.prepare_alpaca(records, demo_tokenizer, SEQ)
    path = tmp_path / "demo.mindrecord"
    assert write_mindrecord(path, (s.as_dict() for s in prepared.samples)) == 16
    jsonl = os.path.join(demo_dir, f"alpaca_demo_seq{SEQ}.jsonl")
    from_mr = build_dataset(str(path), seq_length=SEQ, batch_size=4)
    from_json = build_dataset(jsonl, seq_length=SEQ, batch_size=4)
    pairs = zip(from_mr.create_tuple_iterator(num_epochs=1, output_numpy=True),
                from_json.create_tuple_iterator(num_epochs=1, output_numpy=True))
    n = 0
    for (a_ids, a_lab), (b_ids, b_lab) in pairs:
        np.testing.assert_array_equal(a_ids, b_ids)
        np.testing.assert_array_equal(a_lab, b_lab)
        n += 1
    assert n == 4
