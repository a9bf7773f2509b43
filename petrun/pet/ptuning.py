"""P-tuning v1 (Liu et al. 2021; PEFT's P_TUNING): virtual-token embeddings re-parameterised by a
prompt encoder, fed in front of every sequence through the model's `prompt_embeds` hook (like
prompt tuning; see petrun.pet.prompt for positions and visibility).

Encoders (e = encoder_hidden_size, h = the model's hidden size, P = num_virtual_tokens):
  MLP:  table [P, h] → Linear(h, e) → ReLU → Linear(e, e) → ReLU → Linear(e, h)
  LSTM: table [P, h] → bidirectional LSTM (encoder_num_layers layers, hidden e, dropout
        encoder_dropout between layers) → Linear(2e, 2e) → ReLU → Linear(2e, h)
Parameters:
  mindpet_delta_ptuning_embedding.embedding_table [P, h]
  mindpet_delta_ptuning_mlp.{0,2,4}.weight|bias   (MLP; weights [out, in])
  mindpet_delta_ptuning_lstm.weight_ih_l{k}[_reverse], weight_hh_l{k}[_reverse],
      bias_ih_l{k}[_reverse], bias_hh_l{k}[_reverse]  and  mindpet_delta_ptuning_mlp.{0,2}.* (LSTM)
Trainable count: see parameter_count. Not mergeable. PEFT saves only the encoder's output
([P, h] `prompt_embeddings`); such a file imports as pet_type prompt_tuning.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from petrun.models.layers import Linear
from petrun.pet import base as pet_base
from petrun.pet import virtual
from petrun.pet.config import PtuningConfig
from petrun.pet.ptuning2 import Table

PET_TYPE = "ptuning"


class PromptEncoder(nn.Cell):
    """table → MLP or biLSTM+MLP → (B, P, hidden) prompt embeddings."""

    def __init__(self, num_tokens: int, hidden: int, encoder_hidden: int, kind: str = "MLP",
                 lstm_layers: int = 2, lstm_dropout: float = 0.0, param_dtype=ms.float32,
                 compute_dtype=ms.float32):
        super().__init__()
        self.num_tokens = int(num_tokens)
        self.hidden = int(hidden)
        self.compute_dtype = compute_dtype
        self.use_lstm = kind == "LSTM"
        e = int(encoder_hidden)
        self.embedding = Table(self.num_tokens, self.hidden, param_dtype)
        kw = dict(has_bias=True, compute_dtype=compute_dtype, param_init_type=param_dtype)
        if self.use_lstm:
            # nn.LSTM keeps its parameters in fp32; the encoder is tiny.
            self.lstm = nn.LSTM(self.hidden, e, num_layers=int(lstm_layers), batch_first=True,
                                bidirectional=True, dropout=float(lstm_dropout))
            self.mlp = nn.SequentialCell([Linear(2 * e, 2 * e, **kw), nn.ReLU(),
                                          Linear(2 * e, self.hidden, **kw)])
        else:
            self.mlp = nn.SequentialCell([Linear(self.hidden, e, **kw), nn.ReLU(),
                                          Linear(e, e, **kw), nn.ReLU(),
                                          Linear(e, self.hidden, **kw)])

    def output(self):
        """The prompt as [P, hidden] in compute dtype (what PEFT saves as prompt_embeddings)."""
        x = self.embedding()
        if self.use_lstm:
            x, _ = self.lstm(ops.expand_dims(ops.cast(x, ms.float32), 0))
            x = ops.squeeze(x, 0)
        return ops.cast(self.mlp(ops.cast(x, self.compute_dtype)), self.compute_dtype)

    def construct(self, batch_size):
        x = ops.expand_dims(self.output(), 0)
        return ops.broadcast_to(x, (batch_size, self.num_tokens, self.hidden))


def parameter_count(family: virtual.Family, cfg: PtuningConfig) -> int:
    h, e, p = family.hidden, cfg.encoder_hidden_size, cfg.num_virtual_tokens
    n = p * h
    if cfg.encoder_reparameterization_type == "MLP":
        return n + (h * e + e) + (e * e + e) + (e * h + h)
    for layer in range(cfg.encoder_num_layers):
        inp = h if layer == 0 else 2 * e
        n += 2 * (4 * e * inp + 4 * e * e + 8 * e)       # both directions, two biases each
    return n + (2 * e * 2 * e + 2 * e) + (2 * e * h + h)


def apply(net, cfg: PtuningConfig) -> pet_base.PetReport:
    pet_base.check_fresh(net, PET_TYPE)
    family = virtual.family_of(net)
    virtual.extend_positions(net, family, cfg.num_virtual_tokens,
                             f"{pet_base.KEY_PREFIX}.num_virtual_tokens")
    param_dtype, compute_dtype = virtual.dtypes_of(net)
    encoder = PromptEncoder(cfg.num_virtual_tokens, family.hidden, cfg.encoder_hidden_size,
                            cfg.encoder_reparameterization_type, cfg.encoder_num_layers,
                            cfg.encoder_dropout, param_dtype, compute_dtype)
    return virtual.wrap(net, encoder, virtual.PROMPT_HOOK, PET_TYPE, cfg, family)
