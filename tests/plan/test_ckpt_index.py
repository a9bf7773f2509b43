"""Reading tensor names, shapes and dtypes from checkpoint files without loading them.

Every file here is written by MindSpore itself (save_checkpoint, ckpt and safetensors); the index
must agree with what load_checkpoint returns, also for the writer's rarer paths: tensors split
into several records, append_dict entries, the crc trailer, scalars.
"""
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor

from petrun.ckpt.index import TensorInfo, checkpoint_index, read_index
from petrun.errors import UserError

DTYPES = {ms.float32: "float32", ms.float16: "float16", ms.bfloat16: "bfloat16",
          ms.int32: "int32", ms.int64: "int64"}


def _params():
    rng = np.random.default_rng(0)
    return [
        Parameter(Tensor(rng.normal(size=(4, 6)).astype(np.float32)), name="model.layers.0.w.weight"),
        Parameter(Tensor(rng.normal(size=(6,)).astype(np.float16)), name="model.norm.weight"),
        Parameter(Tensor(rng.normal(size=(3, 5)).astype(np.float32), ms.bfloat16), name="lm_head.weight"),
        Parameter(Tensor(np.arange(7, dtype=np.int32)), name="counts"),
        Parameter(Tensor(np.float32(2.5)), name="scalar"),
    ]


def _expected(path, fmt="ckpt"):
    loaded = ms.load_checkpoint(str(path), format=fmt)
    return {n: TensorInfo(shape=tuple(p.shape), dtype=DTYPES[p.dtype]) for n, p in loaded.items()
            if isinstance(p, Parameter)}


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_index_equals_load_checkpoint(tmp_path, fmt):
    path = tmp_path / f"net.{fmt}"
    ms.save_checkpoint(_params(), str(path), format=fmt)
    index = read_index(path)
    assert index == _expected(path, fmt)
    assert index["scalar"].shape == ()


def test_sliced_tensors_append_dict_and_crc(tmp_path, monkeypatch):
    import mindspore.train.serialization as serialization
    # The writer splits tensors above SLICE_SIZE (KB) into several records with the same tag; a
    # 1 KB threshold takes that real path with a small file.
    monkeypatch.setattr(serialization, "SLICE_SIZE", 1)
    big = Parameter(Tensor(np.ones((64, 33), np.float32)), name="big.weight")   # 8.4 KB
    path = tmp_path / "sliced.ckpt"
    ms.save_checkpoint(_params() + [big], str(path), append_dict={"epoch_num": 3, "note": "hi"},
                       crc_check=True)
    index = read_index(path)
    assert index["big.weight"] == TensorInfo(shape=(64, 33), dtype="float32")
    assert "epoch_num" in index and index["note"].dtype == "str"
    expected = _expected(path)
    assert {n: index[n] for n in expected} == expected


def test_truncated_and_foreign_files_are_user_errors(tmp_path):
    path = tmp_path / "net.ckpt"
    ms.save_checkpoint(_params(), str(path))
    data = path.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated|runs past"):
        read_index(cut)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(UserError) as err:
        read_index(junk)
    assert err.value.key == "load_checkpoint" and err.value.fix
    st = tmp_path / "cut.safetensors"
    ms.save_checkpoint(_params(), str(tmp_path / "ok.safetensors"), format="safetensors")
    st.write_bytes((tmp_path / "ok.safetensors").read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated"):
        read_index(st)


def test_folder_merges_its_files(tmp_path):
    params = _params()
    ms.save_checkpoint(params[:2], str(tmp_path / "a.ckpt"))
    ms.save_checkpoint(params[2:], str(tmp_path / "b.ckpt"))
    index, files = checkpoint_index(tmp_path)
    assert [f.name for f in files] == ["a.ckpt", "b.ckpt"]
    assert set(index) == {p.name for p in params}


def _bytes_read() -> int:
    with open("/proc/self/io", encoding="ascii") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_index_of_a_large_file_does_not_read_it(tmp_path):
    # ~400 MB of weights: the index needs a few hundred bytes of it.
    params = [Parameter(Tensor(np.zeros((2048, 12800), np.float32)), name=f"w{i}") for i in range(4)]
    path = tmp_path / "big.ckpt"
    ms.save_checkpoint(params, str(path))
    del params
    before = _bytes_read()
    index = read_index(path)
    # Bytes this process read (Linux /proc/self/io rchar), not seconds: a full read is ~400 MB.
    # Speed: benchmarks/bench_preflight.py.
    assert _bytes_read() - before < 1 << 20
    assert index == {f"w{i}": TensorInfo(shape=(2048, 12800), dtype="float32") for i in range(4)}
