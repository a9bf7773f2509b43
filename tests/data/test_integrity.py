"""petrun.data.integrity: every record of a MindRecord file read once in a child process; a
damaged page is a UserError naming the file (it used to be a SIGSEGV mid-run); a good file is
read once per version (cache keyed by path, size and mtime of the file and its index)."""
import json
import os
import struct

import numpy as np
import pytest

from petrun.data import integrity
from petrun.data import mindrecord as mr
from petrun.errors import UserError

KEY = "train_dataset.data_loader.dataset_dir"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PETRUN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "verified"


def _write(path, n=64):
    rng = np.random.default_rng(0)
    mr.write_mindrecord(path, [{"input_ids": rng.integers(0, 500, 257, dtype=np.int32),
                                "labels": rng.integers(0, 500, 257, dtype=np.int32)}
                               for _ in range(n)])
    return str(path)


def _damage(path, nbytes=1024):
    with open(path, "r+b") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        f.seek(header["header_size"] + header["page"][0]["page_size"] // 2)
        f.write(b"\xa5" * nbytes)


def test_a_good_file_is_read_once_per_version(tmp_path, cache):
    path = _write(tmp_path / "good.mindrecord")
    (written,) = cache.iterdir()              # petrun wrote it whole: remembered as written
    written.unlink()                          # now as if another tool had written it
    integrity.verify_mindrecord([path], KEY)
    (remembered,) = cache.iterdir()
    assert json.loads(remembered.read_text())["rows"] == 64
    remembered.write_text(json.dumps({**json.loads(remembered.read_text()), "rows": -1}))
    integrity.verify_mindrecord([path], KEY)          # cached: not read again
    assert json.loads(remembered.read_text())["rows"] == -1
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # a new version of the file
    integrity.verify_mindrecord([path], KEY)
    assert len(list(cache.iterdir())) == 2


def test_a_damaged_page_is_named_and_never_remembered(tmp_path, cache):
    path = _write(tmp_path / "bad.mindrecord")
    assert mr.count_samples(path) == 64 and mr.read_first(path) is not None   # looks fine
    _damage(path)
    with pytest.raises(UserError) as e:
        integrity.verify_mindrecord([path], KEY)
    assert e.value.file == path and "damaged" in e.value.message and e.value.fix
    assert not integrity._remembered(integrity._stamp(path))
