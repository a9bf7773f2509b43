"""Small nets for the PET tests: nn.Dense / petrun Linear toys and a tiny Llama."""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from petrun.models.configs import LlamaConfig
from petrun.models.layers import Linear

ATTN = ("wq", "wk", "wv", "wo")
FFN = ("w1", "w2", "w3")


class Attn(nn.Cell):
    def __init__(self, dim=8):
        super().__init__()
        self.wq = nn.Dense(dim, dim, has_bias=False)
        self.wv = nn.Dense(dim, dim)

    def construct(self, x):
        return self.wq(x) + self.wv(x)


class Body(nn.Cell):
    """model.layers.{0,1}.{wq,wv}, model.proj (Linear), model.out (Dense with a fused relu)."""

    def __init__(self, dim=8):
        super().__init__()
        self.layers = nn.CellList([Attn(dim), Attn(dim)])
        self.proj = Linear(dim, dim, has_bias=True)
        self.out = nn.Dense(dim, dim, activation="relu")

    def construct(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.out(self.proj(x))


class Toy(nn.Cell):
    def __init__(self, dim=8):
        super().__init__()
        self.model = Body(dim)
        self.lm_head = nn.Dense(dim, 4)

    def construct(self, x):
        return self.lm_head(self.model(x))


def cpu_device():
    """Pin the device before this process runs its first kernel: MindSpore refuses set_device
    afterwards, and in-process finetunes (petrun.api.Trainer) call it with the same target."""
    try:
        ms.set_device("CPU")
    except RuntimeError:   # the runtime started earlier in this process; nothing to pin now
        pass


def randomize(net, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        p.set_data(Tensor(rng.normal(0.0, scale, p.shape).astype(ms.dtype_to_nptype(p.dtype))))


def snapshot(net) -> dict:
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


def tiny_llama():
    from petrun.models.llama import LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2, seq_length=16,
        multiple_of=16, compute_dtype="float32", param_init_type="float32"))
