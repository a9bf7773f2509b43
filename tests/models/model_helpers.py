"""Tiny configs and parameter helpers shared by the model tests."""
import mindspore as ms
import numpy as np

from petrun.models.configs import LlamaConfig


def tiny_config(**overrides) -> LlamaConfig:
    """2 layers, hidden 32, 4 heads / 2 kv heads (GQA), vocab 97, fp32 so references are exact."""
    values = dict(hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2, vocab_size=97,
                  seq_length=16, multiple_of=16, compute_dtype="float32",
                  param_init_type="float32", init_method_std=0.02)
    values.update(overrides)
    return LlamaConfig(**values)


def randomize(net, seed=0, scale=0.2):
    """Give every parameter a distinct, non-trivial value (norm weights near 1) for references."""
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        value = rng.normal(0.0, scale, p.shape)
        if "norm" in p.name:
            value = 1.0 + value
        p.set_data(ms.Tensor(value.astype(p.asnumpy().dtype)))


def params_np(net) -> dict:
    return {p.name: p.asnumpy().astype(np.float64) for p in net.get_parameters()}
