from __future__ import annotations

import json
import os

import numpy as np
import pytest

from petrun.data import mindrecord as mr
from petrun.data.loader import (DATASET_DIR_KEY, build_dataset, check_dataset, dataset_size,
                                inspect_dataset)
from petrun.errors import UserError

SEQ = 7          # samples are SEQ + 1 = 8 tokens long


def batches(data):
    return list(data.create_tuple_iterator(num_epochs=1, output_numpy=True))


def first_tokens(data) -> list[int]:
    return [int(t) for b in batches(data) for t in b[0][:, 0]]


@pytest.fixture
def mindrecord_file(tmp_path, make_samples):
    path = tmp_path / "train.mindrecord"
    mr.write_mindrecord(path, make_samples(20, SEQ + 1))
    return str(path)


@pytest.fixture
def jsonl_file(tmp_path, make_samples):
    path = tmp_path / "train.jsonl"
    mr.write_jsonl(path, make_samples(20, SEQ + 1))
    return str(path)


# --------------------------------------------------------------------------- happy paths

@pytest.mark.parametrize("fmt", ["mindrecord", "jsonl"])
def test_batches_are_int32_seq_plus_one(fmt, mindrecord_file, jsonl_file, make_samples):
    path = mindrecord_file if fmt == "mindrecord" else jsonl_file
    want = make_samples(20, SEQ + 1)
    out = batches(build_dataset(path, seq_length=SEQ, batch_size=4))
    assert len(out) == 5
    for k, (ids, labels) in enumerate(out):
        assert ids.dtype == np.int32 and labels.dtype == np.int32
        assert ids.shape == labels.shape == (4, SEQ + 1)
        np.testing.assert_array_equal(ids, np.stack([w["input_ids"] for w in want[4 * k:4 * k + 4]]))
        np.testing.assert_array_equal(labels, np.stack([w["labels"] for w in want[4 * k:4 * k + 4]]))


def test_json_list_and_remainder(tmp_path, make_samples):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{k: v.tolist() for k, v in s.items()}
                                for s in make_samples(10, SEQ + 1)]))
    assert len(batches(build_dataset(str(path), seq_length=SEQ, batch_size=4))) == 2
    kept = batches(build_dataset(str(path), seq_length=SEQ, batch_size=4, drop_remainder=False))
    assert [b[0].shape[0] for b in kept] == [4, 4, 2]


def test_directory_is_walked_for_every_shard_file(tmp_path, make_samples):
    samples = make_samples(12, SEQ + 1)
    (tmp_path / "part2").mkdir()
    mr.write_mindrecord(tmp_path / "a.mindrecord", samples[:5])
    mr.write_mindrecord(tmp_path / "part2" / "b.mindrecord0", samples[5:])
    (tmp_path / "README.txt").write_text("not data")
    info = inspect_dataset(str(tmp_path))
    assert info["num_samples"] == 12 and info["sample_length"] == SEQ + 1
    assert [os.path.basename(f) for f in info["files"]] == ["a.mindrecord", "b.mindrecord0"]
    assert sorted(first_tokens(build_dataset(str(tmp_path), seq_length=SEQ, batch_size=3))) == \
        [1000 + i for i in range(12)]


def test_one_shard_path_reads_its_whole_set(tmp_path, make_samples):
    from mindspore.mindrecord import FileWriter

    w = FileWriter(str(tmp_path / "set.mindrecord"), shard_num=3, overwrite=True)
    w.add_schema(mr.schema_for(), "qa")
    w.write_raw_data(make_samples(9, SEQ + 1))
    w.commit()
    path = str(tmp_path / "set.mindrecord1")
    info = inspect_dataset(path)
    assert [os.path.basename(f) for f in info["files"]] == [f"set.mindrecord{i}" for i in range(3)]
    assert info["num_samples"] == 9
    assert sorted(first_tokens(build_dataset(path, seq_length=SEQ, batch_size=3))) == \
        [1000 + i for i in range(9)]


@pytest.mark.parametrize("fmt", ["mindrecord", "jsonl"])
def test_missing_labels_default_to_input_ids(fmt, tmp_path, make_samples):
    samples = make_samples(4, SEQ + 1, with_labels=False)
    if fmt == "mindrecord":
        path = str(tmp_path / "wiki.mindrecord")
        mr.write_mindrecord(path, samples, columns=("input_ids",))
    else:
        path = str(tmp_path / "wiki.jsonl")
        mr.write_jsonl(path, samples, columns=("input_ids",))
    (ids, labels), = batches(build_dataset(path, seq_length=SEQ, batch_size=4))
    np.testing.assert_array_equal(labels, ids)
    assert labels.dtype == np.int32
    (only_ids,), = batches(build_dataset(path, seq_length=SEQ, batch_size=4,
                                         columns=("input_ids",)))
    np.testing.assert_array_equal(only_ids, ids)


def test_int64_mindrecord_is_cast_to_int32(tmp_path):
    from mindspore.mindrecord import FileWriter

    path = str(tmp_path / "i64.mindrecord")
    w = FileWriter(path, shard_num=1, overwrite=True)
    w.add_schema({"input_ids": {"type": "int64", "shape": [-1]},
                  "labels": {"type": "int64", "shape": [-1]}}, "qa")
    w.write_raw_data([{"input_ids": np.arange(8, dtype=np.int64) + i,
                       "labels": np.arange(8, dtype=np.int64)} for i in range(2)])
    w.commit()
    (ids, labels), = batches(build_dataset(path, seq_length=SEQ, batch_size=2))
    assert ids.dtype == np.int32 and labels.dtype == np.int32
    assert ids[1, 0] == 1


# --------------------------------------------------------------------------- sharding, shuffle

@pytest.mark.parametrize("fmt", ["mindrecord", "jsonl"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_two_shards_are_disjoint_and_complete(fmt, shuffle, mindrecord_file, jsonl_file):
    path = mindrecord_file if fmt == "mindrecord" else jsonl_file
    seen = [first_tokens(build_dataset(path, seq_length=SEQ, batch_size=2, shuffle=shuffle,
                                       seed=11, num_shards=2, shard_id=r)) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 10
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [1000 + i for i in range(20)]
    if not shuffle:   # MindSpore interleaves: rank 0 gets samples 0, 2, 4, ...
        assert seen[0] == [1000 + i for i in range(0, 20, 2)]


@pytest.mark.parametrize("fmt", ["mindrecord", "jsonl"])
def test_shuffle_is_deterministic_per_seed(fmt, mindrecord_file, jsonl_file):
    path = mindrecord_file if fmt == "mindrecord" else jsonl_file

    def order(seed, shuffle=True):
        return first_tokens(build_dataset(path, seq_length=SEQ, batch_size=1, shuffle=shuffle,
                                          seed=seed))

    a, b, c = order(3), order(3), order(4)
    assert a == b
    assert a != c
    assert sorted(a) == sorted(c) == [1000 + i for i in range(20)]
    assert a != sorted(a)
    assert order(3, shuffle=False) == [1000 + i for i in range(20)]


def test_each_epoch_is_reshuffled(mindrecord_file):
    def order(epoch):
        return first_tokens(build_dataset(mindrecord_file, seq_length=SEQ, batch_size=1,
                                          shuffle=True, seed=5, epoch=epoch))
    e1, e2 = order(1), order(2)
    assert sorted(e1) == sorted(e2) and e1 != e2
    assert order(1) == e1   # the order is a function of (seed, epoch): resumable


def test_inspect_and_size(mindrecord_file, jsonl_file):
    for path in (mindrecord_file, jsonl_file):
        info = inspect_dataset(path)
        assert info["columns"] == ["input_ids", "labels"]
        assert info["sample_length"] == SEQ + 1 and info["num_samples"] == 20
        assert info["files"] == [path]
        assert dataset_size(path) == 20
        assert dataset_size(path, batch_size=3) == 6
        assert dataset_size(path, batch_size=3, num_shards=3) == 2           # ceil(20/3) = 7
        assert dataset_size(path, batch_size=3, num_shards=3, drop_remainder=False) == 3
        assert check_dataset(path, seq_length=SEQ, batch_size=4)["num_samples"] == 20
    built = build_dataset(mindrecord_file, seq_length=SEQ, batch_size=3, num_shards=3, shard_id=1)
    assert built.get_dataset_size() == dataset_size(mindrecord_file, batch_size=3, num_shards=3)


# --------------------------------------------------------------------------- user errors

def raises_user_error(path, *, match, seq_length=SEQ, batch_size=2, file=None, **kw) -> UserError:
    with pytest.raises(UserError) as e:
        build_dataset(path, seq_length=seq_length, batch_size=batch_size, **kw)
    err = e.value
    assert err.key == DATASET_DIR_KEY
    assert err.file == (file or str(path))
    assert err.fix
    assert match in err.message, err.message
    assert str(path) in str(err) and "Fix:" in str(err)
    return err


def test_error_missing_path(tmp_path):
    raises_user_error(str(tmp_path / "nope.mindrecord"), match="does not exist")


def test_error_directory_without_mindrecord(tmp_path, make_samples):
    mr.write_jsonl(tmp_path / "train.jsonl", make_samples(4, SEQ + 1))
    err = raises_user_error(str(tmp_path), match="no MindRecord files")
    assert "train.jsonl" in err.fix


def test_error_db_and_unknown_suffix(mindrecord_file, tmp_path):
    err = raises_user_error(mindrecord_file + ".db", match="index file")
    assert "train.mindrecord" in err.fix
    other = tmp_path / "train.csv"
    other.write_text("x")
    raises_user_error(str(other), match="unrecognised")
    broken = tmp_path / "train.parquet"   # Parquet is read (issue 19); a broken one says so
    broken.write_text("x")
    raises_user_error(str(broken), match="cannot read the Parquet data")


def test_error_empty_datasets(tmp_path):
    from mindspore.mindrecord import FileWriter

    empty_jsonl = tmp_path / "empty.jsonl"
    empty_jsonl.write_text("\n")
    raises_user_error(str(empty_jsonl), match="no samples")

    path = str(tmp_path / "empty.mindrecord")
    w = FileWriter(path, shard_num=1, overwrite=True)
    w.add_schema(mr.schema_for(), "qa")
    w.commit()
    raises_user_error(path, match="no samples")


def test_error_raw_alpaca_json(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "hi"}]))
    err = raises_user_error(str(path), match="not tokenized")
    assert "petrun data prepare alpaca" in err.fix and "--seq-length 7" in err.fix


def test_error_missing_column(mindrecord_file):
    err = raises_user_error(mindrecord_file, match="attention_mask",
                            columns=("input_ids", "attention_mask"))
    assert "input_columns" in err.fix


def test_error_wrong_sample_length(mindrecord_file, jsonl_file):
    for path in (mindrecord_file, jsonl_file):
        err = raises_user_error(path, match="samples have 8 tokens", seq_length=16)
        assert "17 (seq_length + 1)" in err.message
        assert "seq_length (16" in err.fix and "model.model_config.seq_length to 7" in err.fix


def test_error_fewer_samples_than_a_batch(mindrecord_file):
    raises_user_error(mindrecord_file, match="fewer than one batch of 32", batch_size=32)
    err = raises_user_error(mindrecord_file, match="per shard", batch_size=8, num_shards=4,
                            shard_id=0)
    assert "at most 5" in err.fix
    # Without drop_remainder a short dataset is fine.
    assert len(batches(build_dataset(mindrecord_file, seq_length=SEQ, batch_size=32,
                                     drop_remainder=False))) == 1


def test_error_inconsistent_json_records(tmp_path, make_samples):
    rows = [{k: v.tolist() for k, v in s.items()} for s in make_samples(4, SEQ + 1)]
    rows[2]["labels"] = rows[2]["labels"][:-1]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    raises_user_error(str(path), match="record 2: 'labels' has 7 tokens")

    path2 = tmp_path / "bad2.jsonl"
    path2.write_text(json.dumps(rows[0]) + "\n{oops\n")
    raises_user_error(str(path2), match="line 2 is not valid JSON")


def test_error_corrupt_mindrecord(tmp_path, mindrecord_file):
    broken = tmp_path / "broken.mindrecord"
    broken.write_bytes(b"\0" * 4096)
    raises_user_error(str(broken), match="cannot read the MindRecord data")

    # A data file renamed away from the name it was written with cannot be opened either.
    moved = tmp_path / "moved.mindrecord"
    os.rename(mindrecord_file, moved)
    os.rename(mindrecord_file + ".db", str(moved) + ".db")
    err = raises_user_error(str(moved), match="cannot read the MindRecord data")
    assert "names they were written with" in err.fix
