"""Prefix tuning (reference/mindformers.md §5.5): P-Tuning v2's prefix encoder, always with its
tanh MLP (MindFormers' PrefixTuningModel): prefix_token_num rows, MLP width mid_dim, dropout
dropout_rate on the prefix key/values.

Parameters:
    mindpet_delta_prefixtuning_embedding.embedding_table  [prefix_token_num, W]
    mindpet_delta_prefixtuning_trans.0.weight [mid_dim, W]   .0.bias [mid_dim]
    mindpet_delta_prefixtuning_trans.2.weight [W, mid_dim]   .2.bias [W]
W = 2·num_layers·n_kv_heads·head_dim. Trainable count: P·W + 2·W·mid_dim + mid_dim + W.
Not mergeable. PEFT saves only the MLP's output ([P, W] `prompt_embeddings`), which cannot be
turned back into the MLP: import such files as pet_type ptuning2 with prefix_projection False.
"""
from __future__ import annotations

from petrun.pet import base as pet_base
from petrun.pet import virtual
from petrun.pet.config import PrefixTuningConfig
from petrun.pet.ptuning2 import prefix_encoder

PET_TYPE = "prefixtuning"


def parameter_count(family: virtual.Family, cfg: PrefixTuningConfig) -> int:
    w, m = family.prefix_width, cfg.mid_dim
    return cfg.prefix_token_num * w + 2 * w * m + m + w


def apply(net, cfg: PrefixTuningConfig) -> pet_base.PetReport:
    pet_base.check_fresh(net, PET_TYPE)
    family = virtual.family_of(net)
    encoder = prefix_encoder(net, family, cfg.prefix_token_num, cfg.mid_dim, cfg.dropout_rate)
    return virtual.wrap(net, encoder, virtual.PREFIX_HOOK, PET_TYPE, cfg, family)
