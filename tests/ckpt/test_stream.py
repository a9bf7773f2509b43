"""petrun.ckpt.stream: tensor-at-a-time .ckpt and safetensors I/O against the real libraries."""
import json
import struct

import mindspore as ms
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from petrun.ckpt import stream
from petrun.ckpt.stream import (CkptReader, CkptWriter, SafetensorsReader, SafetensorsWriter,
                                TensorInfo, bf16_bits_to_f32, cast, f32_to_bf16_bits)
from petrun.errors import UserError

RNG = np.random.default_rng(7)
ARRAYS = {"model.layers.0.attention.wq.weight": RNG.normal(size=(6, 4)).astype(np.float32),
          "model.norm_out.weight": RNG.normal(size=(4,)).astype(np.float16),
          "step": np.array(3, np.int32),
          "ids": np.arange(5, dtype=np.int64)}


def test_ckpt_writer_is_byte_identical_to_mindspore(tmp_path):
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in ARRAYS.items()],
                       str(tmp_path / "ref.ckpt"))
    w = CkptWriter(tmp_path / "mine.ckpt")
    for k, v in ARRAYS.items():
        w.write(k, v, str(v.dtype))
    w.commit()
    assert (tmp_path / "mine.ckpt").read_bytes() == (tmp_path / "ref.ckpt").read_bytes()
    assert not list(tmp_path.glob(".*partial*"))


def test_ckpt_reader_reads_mindspore_files_with_bf16_crc_and_extras(tmp_path):
    bf = ms.Tensor(RNG.normal(size=(3, 5)).astype(np.float32)).astype(ms.bfloat16)
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(ARRAYS["ids"])},
                        {"name": "bf", "data": bf}], str(tmp_path / "a.ckpt"),
                       append_dict={"epoch_num": 2, "note": "hello"}, crc_check=True)
    with CkptReader(tmp_path / "a.ckpt") as r:
        assert r.infos["bf"] == TensorInfo("bfloat16", (3, 5))
        np.testing.assert_array_equal(bf16_bits_to_f32(r.read("bf")), bf.float().asnumpy())
        np.testing.assert_array_equal(r.read("w"), ARRAYS["ids"])
        assert "epoch_num" in r.infos and "note" in r.strings


def test_large_tensors_are_sliced_like_mindspore(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "CKPT_SLICE_BYTES", 64)   # 16 floats per record
    big = RNG.normal(size=(10, 10)).astype(np.float32)
    w = CkptWriter(tmp_path / "s.ckpt")
    w.write("big", big, "float32")
    w.write("after", ARRAYS["ids"], "int64")
    w.commit()
    loaded = ms.load_checkpoint(str(tmp_path / "s.ckpt"))   # MindSpore joins the slices
    np.testing.assert_array_equal(loaded["big"].asnumpy(), big)
    with CkptReader(tmp_path / "s.ckpt") as r:
        assert len(r._chunks["big"]) == 7   # 400 bytes / 64
        np.testing.assert_array_equal(r.read("big"), big)
        np.testing.assert_array_equal(r.read("after"), ARRAYS["ids"])


def test_safetensors_writer_output_loads_with_safetensors(tmp_path):
    layout = [(k, TensorInfo(str(v.dtype), v.shape)) for k, v in ARRAYS.items()]
    w = SafetensorsWriter(tmp_path / "m.safetensors", layout, metadata={"format": "pt"})
    for k, v in ARRAYS.items():
        w.write(k, v, str(v.dtype))
    w.commit()
    loaded = load_file(str(tmp_path / "m.safetensors"))
    assert sorted(loaded) == sorted(ARRAYS)
    for k, v in ARRAYS.items():
        np.testing.assert_array_equal(loaded[k], v)
    with safe_open(str(tmp_path / "m.safetensors"), framework="np") as f:
        assert f.metadata() == {"format": "pt"}


def test_safetensors_writer_checks_order_and_completeness(tmp_path):
    w = SafetensorsWriter(tmp_path / "m.safetensors", [("a", TensorInfo("float32", (2,))),
                                                        ("b", TensorInfo("float32", (2,)))])
    with pytest.raises(ValueError):
        w.write("b", np.zeros(2, np.float32), "float32")
    w.write("a", np.zeros(2, np.float32), "float32")
    with pytest.raises(ValueError):
        w.commit()
    w.abort()
    assert not list(tmp_path.iterdir())


def test_safetensors_reader_single_and_sharded(tmp_path):
    save_file({"a": ARRAYS["model.norm_out.weight"]}, str(tmp_path / "part1.safetensors"))
    save_file({"b": ARRAYS["ids"], "c": ARRAYS["model.layers.0.attention.wq.weight"]},
              str(tmp_path / "part2.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"a": "part1.safetensors", "b": "part2.safetensors",
                                        "c": "part2.safetensors"}}))
    with SafetensorsReader(tmp_path) as r:
        assert sorted(r.infos) == ["a", "b", "c"]
        np.testing.assert_array_equal(r.read("c"), ARRAYS["model.layers.0.attention.wq.weight"])
    with SafetensorsReader(tmp_path / "part2.safetensors") as r:
        assert sorted(r.infos) == ["b", "c"]


def test_bf16_safetensors_are_carried_as_bits(tmp_path):
    bits = f32_to_bf16_bits(RNG.normal(size=(4, 3)).astype(np.float32))
    w = SafetensorsWriter(tmp_path / "b.safetensors", [("x", TensorInfo("bfloat16", (4, 3)))])
    w.write("x", bits, "bfloat16")
    w.commit()
    with safe_open(str(tmp_path / "b.safetensors"), framework="np") as f:
        assert f.get_slice("x").get_dtype() == "BF16"
    with SafetensorsReader(tmp_path / "b.safetensors") as r:
        assert r.infos["x"] == TensorInfo("bfloat16", (4, 3))
        np.testing.assert_array_equal(r.read("x"), bits)


@pytest.mark.parametrize("value,bits", [
    (1.0, 0x3F80), (-2.0, 0xC000), (1 + 2 ** -8, 0x3F80),        # a tie rounds to even (down)
    (1 + 3 * 2 ** -8, 0x3F82),                                     # a tie rounds to even (up)
    (1 + 2 ** -8 + 2 ** -20, 0x3F81), (np.inf, 0x7F80), (-np.inf, 0xFF80), (np.nan, 0x7FC0),
    (3.4e38, 0x7F80)])                                             # overflow rounds to inf
def test_fp32_to_bf16_rounds_to_nearest_even(value, bits):
    assert int(f32_to_bf16_bits(np.array([value], np.float32))[0]) == bits


def test_cast_goes_through_fp32_and_leaves_integers():
    x = RNG.normal(size=(3, 7)).astype(np.float32)
    bf, dt = cast(x, "float32", "bfloat16")
    assert dt == "bfloat16" and bf.dtype == np.uint16
    half, dt = cast(bf, "bfloat16", "float16")
    assert dt == "float16"
    np.testing.assert_array_equal(half, bf16_bits_to_f32(bf).astype(np.float16))
    assert np.abs(bf16_bits_to_f32(bf) - x).max() <= np.abs(x).max() * 2 ** -8
    ids, dt = cast(ARRAYS["ids"], "int64", "float16")
    assert dt == "int64" and ids is ARRAYS["ids"]


def test_damaged_files_are_user_errors(tmp_path):
    save_file({"a": np.zeros((64,), np.float32)}, str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-16])
    with pytest.raises(UserError, match="truncated"):
        SafetensorsReader(tmp_path)
    (tmp_path / "junk.ckpt").write_bytes(struct.pack("<Q", 5) + b"hello world")
    with pytest.raises(UserError) as err:
        CkptReader(tmp_path / "junk.ckpt")
    assert err.value.file == str(tmp_path / "junk.ckpt")


def test_folder_without_safetensors_asks_for_safe_serialization(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UserError) as err:
        SafetensorsReader(tmp_path)
    assert "pytorch_model.bin" in str(err.value) and "safe_serialization" in err.value.fix


def test_index_naming_a_missing_shard_is_a_user_error(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(UserError, match="model-00001-of-00002"):
        SafetensorsReader(tmp_path)
