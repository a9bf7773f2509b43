"""P-Tuning v2 (reference/mindformers.md §5.4, §5.6): trainable key/value prefixes for every layer.

A table of pre_seq_len rows, each 2·L·n_kv·head_dim wide (optionally through a tanh MLP of width
projection_dim), is cut into one (2, B, n_kv_heads, pre_seq_len, head_dim) key/value pair per layer
and handed to the model's `prefix_key_values` hook: the attention puts the pair in front of its
keys/values (no RoPE on them) and every token sees every prefix slot.

Parameters (MindFormers' names; GLM2 adds the `prefix_encoder.` parent of ChatGLM2WithPtuning2):
    [prefix_encoder.]mindpet_delta_ptuning2_embedding.embedding_table  [pre_seq_len, W]
    with prefix_projection:
    mindpet_delta_ptuning2_trans.0.weight [projection_dim, W]   .0.bias [projection_dim]
    mindpet_delta_ptuning2_trans.2.weight [W, projection_dim]   .2.bias [W]
    (GLM2: prefix_encoder.mindpet_delta_ptuning2_dense_in.* / _dense_out.*, see virtual.py)
W = 2·num_layers·n_kv_heads·head_dim (ChatGLM2-6B: 28·2·2·128 = 14336).
Trainable count: pre_seq_len·W, plus 2·W·projection_dim + projection_dim + W with the projection.
Not mergeable: the prefix is extra attention slots, not a weight update.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, initializer

from petrun.models.layers import Linear
from petrun.pet import base as pet_base
from petrun.pet import virtual
from petrun.pet.config import Ptuning2Config

PET_TYPE = "ptuning2"


class Table(nn.Cell):
    """One trainable [rows, width] matrix named `embedding_table` (MindSpore's Embedding name)."""

    def __init__(self, rows: int, width: int, dtype, sigma: float = 0.01):
        super().__init__()
        self.embedding_table = Parameter(initializer(Normal(sigma=sigma), [rows, width], dtype),
                                         name="embedding_table")

    def construct(self):
        return self.embedding_table


class PrefixEncoder(nn.Cell):
    """table (→ tanh MLP) → (L, 2, B, n_kv, P, D) prefix key/values; shared with prefix tuning.

    The width is laid out [layer 0 keys | layer 0 values | layer 1 keys | ...], each n_kv·D wide
    (heads outer) — the layout of MindFormers, THUDM's ChatGLM2 and PEFT's `prompt_embeddings`.
    """

    def __init__(self, num_tokens: int, num_layers: int, kv_heads: int, head_dim: int,
                 projection_dim: int | None = None, dropout: float = 0.0,
                 param_dtype=ms.float32, compute_dtype=ms.float32):
        super().__init__()
        self.num_tokens = int(num_tokens)
        self.num_layers = int(num_layers)
        self.kv_heads = int(kv_heads)
        self.head_dim = int(head_dim)
        self.width = 2 * self.num_layers * self.kv_heads * self.head_dim
        self.compute_dtype = compute_dtype
        self.embedding = Table(self.num_tokens, self.width, param_dtype)
        self.projection = projection_dim is not None
        if self.projection:
            kw = dict(has_bias=True, compute_dtype=compute_dtype, param_init_type=param_dtype)
            self.trans = nn.SequentialCell([Linear(self.width, int(projection_dim), **kw), nn.Tanh(),
                                            Linear(int(projection_dim), self.width, **kw)])
        self.use_dropout = float(dropout) > 0
        if self.use_dropout:
            self.dropout = nn.Dropout(p=float(dropout))

    def output(self):
        """The prefix as one [P, W] matrix in compute dtype: what PEFT saves as prompt_embeddings."""
        x = ops.cast(self.embedding(), self.compute_dtype)
        if self.projection:
            x = self.trans(x)
        return x

    def construct(self, batch_size):
        p, layers, kv, d = self.num_tokens, self.num_layers, self.kv_heads, self.head_dim
        x = ops.reshape(self.output(), (p, 2 * layers, kv, d))
        x = ops.reshape(ops.transpose(x, (1, 2, 0, 3)), (layers, 2, 1, kv, p, d))
        x = ops.broadcast_to(x, (layers, 2, batch_size, kv, p, d))
        if self.use_dropout:
            x = self.dropout(x)
        return x


def prefix_encoder(net, family: virtual.Family, num_tokens: int, projection_dim, dropout):
    param_dtype, compute_dtype = virtual.dtypes_of(net)
    return PrefixEncoder(num_tokens, family.num_layers, family.kv_heads, family.head_dim,
                         projection_dim, dropout, param_dtype, compute_dtype)


def parameter_count(family: virtual.Family, cfg: Ptuning2Config) -> int:
    """Trainable elements this config adds to a model of `family`'s size."""
    w = family.prefix_width
    n = cfg.pre_seq_len * w
    if cfg.prefix_projection:
        m = cfg.projection_dim
        n += 2 * w * m + m + w
    return n


def apply(net, cfg: Ptuning2Config) -> pet_base.PetReport:
    """Wrap `net` so a prefix encoder feeds its prefix_key_values hook; freeze the rest."""
    pet_base.check_fresh(net, PET_TYPE)
    family = virtual.family_of(net)
    encoder = prefix_encoder(net, family, cfg.pre_seq_len,
                             cfg.projection_dim if cfg.prefix_projection else None,
                             cfg.dropout_prob)
    return virtual.wrap(net, encoder, virtual.PREFIX_HOOK, PET_TYPE, cfg, family)
