from __future__ import annotations

import json
import os

import numpy as np
import pytest

from petrun.data import mindrecord as mr


def test_write_read_round_trip_has_mindformers_schema(tmp_path, make_samples):
    samples = make_samples(7, 9)
    path = tmp_path / "train.mindrecord"
    assert mr.write_mindrecord(path, samples) == 7

    # Only the data file and its index are left: no temporary names, no temporary directory.
    assert sorted(os.listdir(tmp_path)) == ["train.mindrecord", "train.mindrecord.db"]
    assert mr.read_schema(str(path)) == {"input_ids": {"type": "int32", "shape": [-1]},
                                         "labels": {"type": "int32", "shape": [-1]}}
    rows = mr.read_mindrecord(str(path))
    assert len(rows) == 7
    for row, want in zip(rows, samples):
        assert row["input_ids"].dtype == np.int32 and row["labels"].dtype == np.int32
        np.testing.assert_array_equal(row["input_ids"], want["input_ids"])
        np.testing.assert_array_equal(row["labels"], want["labels"])
    assert mr.count_samples(str(path)) == 7
    np.testing.assert_array_equal(mr.read_first(str(path))["labels"], samples[0]["labels"])


def test_overwrite_is_explicit_and_replaces_content(tmp_path, make_samples):
    path = tmp_path / "d.mindrecord"
    mr.write_mindrecord(path, make_samples(3, 5))
    with pytest.raises(FileExistsError):
        mr.write_mindrecord(path, make_samples(4, 5))
    mr.write_mindrecord(path, make_samples(4, 6), overwrite=True)
    rows = mr.read_mindrecord(str(path))
    assert len(rows) == 4 and rows[0]["input_ids"].shape == (6,)


def test_failed_write_leaves_nothing_behind(tmp_path, make_samples):
    good = make_samples(1500, 4)   # more than one write chunk reaches the disk first
    bad = good + [{"input_ids": [1, 2, 3], "labels": ["a", "b", "c"]}]
    with pytest.raises(ValueError, match="sample 1500"):
        mr.write_mindrecord(tmp_path / "x.mindrecord", bad)
    assert os.listdir(tmp_path) == []

    # An existing file survives a failed overwrite untouched.
    mr.write_mindrecord(tmp_path / "x.mindrecord", make_samples(2, 4))
    with pytest.raises(ValueError):
        mr.write_mindrecord(tmp_path / "x.mindrecord", bad, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["x.mindrecord", "x.mindrecord.db"]
    assert len(mr.read_mindrecord(str(tmp_path / "x.mindrecord"))) == 2


def test_values_must_fit_int32(tmp_path):
    with pytest.raises(ValueError, match="int32"):
        mr.write_mindrecord(tmp_path / "x.mindrecord",
                            [{"input_ids": [1, 2 ** 31], "labels": [1, 2]}])
    with pytest.raises(ValueError, match="mindrecord"):
        mr.write_mindrecord(tmp_path / "x.mr", [{"input_ids": [1], "labels": [1]}])


def test_input_ids_only_schema(tmp_path, make_samples):
    path = tmp_path / "wiki.mindrecord"
    mr.write_mindrecord(path, make_samples(2, 5, with_labels=False), columns=("input_ids",),
                        schema_name="wiki")
    assert list(mr.read_schema(str(path))) == ["input_ids"]


def test_jsonl_writer(tmp_path, make_samples):
    path = tmp_path / "d.jsonl"
    samples = make_samples(3, 4)
    assert mr.write_samples(path, samples) == 3
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[2] == {"input_ids": samples[2]["input_ids"].tolist(),
                        "labels": samples[2]["labels"].tolist()}
    assert os.listdir(tmp_path) == ["d.jsonl"]


def test_find_mindrecord_files_follows_mindformers_naming(tmp_path, make_samples):
    (tmp_path / "sub").mkdir()
    for name in ("a.mindrecord", "sub/b.mindrecord0", "sub/b.mindrecord1"):
        (tmp_path / name).write_bytes(b"")
        (tmp_path / (name + ".db")).write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "a.mindrecord.bak").write_text("x")
    found = [os.path.relpath(p, tmp_path) for p in mr.find_mindrecord_files(tmp_path)]
    assert found == ["a.mindrecord", os.path.join("sub", "b.mindrecord0"),
                     os.path.join("sub", "b.mindrecord1")]
