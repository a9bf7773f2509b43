"""Shared machinery of the HF parity tests (tests/models/test_parity_*.py).

Each family test builds a tiny random model in HF transformers, saves it as safetensors, converts
it with the real CLI (`python -m petrun ckpt convert`), loads the result strictly into petrun's
model, and compares fp32 logits and losses; then converts back with --reverse and compares tensors.
torch/transformers come from the `parity` extra; without them the tests skip.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from tests.conftest import run_cli

TOL = 1e-4


def randomize_torch(model, seed: int = 0, scale: float = 0.2) -> None:
    """Every parameter drawn afresh (norm scales near 1) so logits are far from trivial."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            value = torch.randn(p.shape, generator=gen) * scale
            if "norm" in name or name.split(".")[-2].startswith("ln"):
                value = value + 1.0 if name.endswith("weight") else value
            p.copy_(value.to(p.dtype))


def save_hf(model, folder: Path, max_shard_size: str | None = None) -> Path:
    kwargs = {"safe_serialization": True}
    if max_shard_size:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(str(folder), **kwargs)
    return folder


def convert(family: str, src: Path, dst: Path, *extra) -> None:
    r = run_cli("ckpt", "convert", "--model", family, "--src", src, "--dst", dst, *extra,
                timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "wrote" in r.stdout and "Traceback" not in r.stderr


def write_petrun_yaml(path: Path, arch: str, model_config: dict) -> Path:
    path.write_text(yaml.safe_dump({"model": {"arch": {"type": arch},
                                              "model_config": model_config}}), encoding="utf-8")
    return path


def build_petrun(yaml_path: Path, ckpt: Path):
    """petrun's model for the YAML, with the converted checkpoint loaded strictly."""
    from petrun.api import build_model, load_checkpoint

    net = build_model(str(yaml_path), device_target="CPU")
    result = load_checkpoint(net, ckpt, strict=True)
    assert not result["missing"] and result["loaded"]
    net.set_train(False)
    return net


def random_ids(vocab: int, batch: int, seq: int, seed: int) -> np.ndarray:
    # Token 0 is the pad id everywhere here: avoided so no padding mask can differ.
    return np.random.default_rng(seed).integers(1, vocab, (batch, seq)).astype(np.int32)


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long)).logits.float().numpy()


def hf_loss(model, ids: np.ndarray, labels: np.ndarray) -> float:
    """HF's causal-LM loss: it shifts inside (logits[:, :-1] against labels[:, 1:])."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    labels=torch.tensor(labels, dtype=torch.long))
    return float(out.loss)


def ms_logits(net, ids: np.ndarray) -> np.ndarray:
    from mindspore import Tensor

    return net(Tensor(ids)).asnumpy()


def ms_loss(net, ids: np.ndarray, labels: np.ndarray) -> float:
    from mindspore import Tensor

    return float(net(Tensor(ids), Tensor(labels)).asnumpy())


def assert_logits_match(hf_model, net, vocab: int, seqs=(5, 9, 16)) -> None:
    for k, seq in enumerate(seqs):
        ids = random_ids(vocab, 2, seq, seed=10 + k)
        want, got = hf_logits(hf_model, ids), ms_logits(net, ids)
        assert got.shape == want.shape
        assert np.abs(want).max() > 1.0, "reference logits are trivially small"
        err = np.abs(got - want).max()
        assert err <= TOL, f"seq {seq}: max |petrun - HF| = {err:.3g}"


def labelled_batch(vocab: int, batch: int, seq_plus_one: int, seed: int):
    """ids and labels of seq_length + 1 tokens, a masked prompt and a masked tail (-100)."""
    ids = random_ids(vocab, batch, seq_plus_one, seed)
    labels = ids.copy()
    labels[:, :4] = -100
    labels[0, -3:] = -100
    return ids, labels


def safetensors_tensors(folder: Path) -> dict:
    """name -> torch tensor for every tensor of a (possibly sharded) HF folder."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def assert_same_tensors(a: dict, b: dict) -> None:
    import torch

    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(a[name], b[name]), name


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
