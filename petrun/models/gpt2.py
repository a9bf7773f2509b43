"""GPT-2 in MindSpore, with MindFormers' parameter names (reference/mindformers.md §6.3).

The attribute tree *is* the checkpoint layout (small: hidden 768, 12 layers, 12 heads):

    backbone.embedding.word_embedding.embedding_table        [vocab, hidden]  (also the LM head)
    backbone.embedding.position_embedding.embedding_table    [max_positions, hidden]
    backbone.blocks.{i}.layernorm1.gamma|beta                [hidden]
    backbone.blocks.{i}.attention.dense1|dense2|dense3.weight  [hidden, hidden] (q/k/v, out×in)
    backbone.blocks.{i}.attention.dense1|dense2|dense3.bias    [hidden]
    backbone.blocks.{i}.attention.projection.weight|bias     [hidden, hidden] stored in×out
    backbone.blocks.{i}.layernorm2.gamma|beta                [hidden]
    backbone.blocks.{i}.output.mapping.weight|bias           [hidden, 4·hidden] stored in×out
    backbone.blocks.{i}.output.projection.weight|bias        [4·hidden, hidden] stored in×out
    backbone.layernorm.gamma|beta                            [hidden]

Block (pre-LN): h = x + attention(layernorm1(x)); out = h + output(layernorm2(h)); learned absolute
positions; GeLU (`gelu` = tanh approximation as HF's gelu_new, `fast_gelu` = x·sigmoid(1.702x));
the LM head multiplies by the word-embedding table (tied, no parameter of its own). dense1-3 are
petrun Linear layers; projection/mapping keep MindFormers' in×out storage (LinearInOut declares
weight_in_out, so PET methods that fold into a weight transpose their delta for them).
Loss as Llama: rows are seq_length + 1 long, shifted inside, labels -100 and pad tokens ignored.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, initializer

from petrun.models.broadcast import swap_seq_heads
from petrun.models.configs import GPT2Config
from petrun.models.dtypes import resolve_dtypes
from petrun.models.kernels import attention_core, heads_by_gather, kernels_for
from petrun.models.layers import (DenseBase, Dropout, LayerNorm, Linear, MaskedCrossEntropy,
                                  Residual, TiedHead, causal_mask, extend_cache, next_token_inputs,
                                  widen_mask)

_KEY = "model.model_config"
IGNORE_INDEX = -100
LAYERNORM_EPS = 1e-5   # MindFormers' LayerNorm default, equal to HF GPT-2's layer_norm_epsilon
_INIT_STD = 0.02


def gpt2_dtypes(config: GPT2Config, device_target: str | None = None) -> dict:
    names = {"compute_dtype": config.compute_dtype, "param_init_type": config.param_init_type,
             "layernorm_compute_type": config.layernorm_compute_type,
             "softmax_compute_type": config.softmax_compute_type}
    return resolve_dtypes(names, device_target, key_prefix=_KEY)


def _check(config: GPT2Config) -> None:
    # The checks live on the config (no MindSpore) so config validate runs them too.
    config.check()


class LinearInOut(DenseBase):
    """y = x @ weight (+ bias) with weight stored [in, out] (MindFormers' transpose_b=False
    layers; the same layout as HF's GPT-2 Conv1D, so those weights load untransposed)."""
    shard_kind = "linear_in_out"
    weight_in_out = True

    def __init__(self, in_channels: int, out_channels: int, has_bias: bool = True,
                 compute_dtype=ms.float32, param_init_type=ms.float32):
        super().__init__(in_channels, out_channels, has_bias, compute_dtype, param_init_type,
                         weight_init=Normal(sigma=_INIT_STD, mean=0.0))


class TableEmbedding(nn.Cell):
    """Lookup in `embedding_table` (MindFormers' VocabEmbedding parameter name).

    shard_kind "embedding" looks up (batch, seq) ids, "positions" a plain (seq,) range.
    """

    def __init__(self, rows: int, width: int, param_init_type=ms.float32,
                 shard_kind: str = "embedding"):
        super().__init__()
        self.shard_kind = shard_kind
        self.embedding_table = Parameter(initializer(Normal(sigma=_INIT_STD, mean=0.0),
                                                     [int(rows), int(width)], param_init_type),
                                         name="embedding_table")
        self.gather = ops.Gather()

    def construct(self, ids):
        return self.gather(self.embedding_table, ids, 0)


class GPT2Embedding(nn.Cell):
    shard_kind = "embed_positions"

    def __init__(self, config: GPT2Config, dtypes: dict):
        super().__init__()
        self.word_embedding = TableEmbedding(config.vocab_size, config.hidden_size,
                                             dtypes["param_init_type"])
        self.position_embedding = TableEmbedding(config.max_positions, config.hidden_size,
                                                 dtypes["param_init_type"], "positions")
        self.add = ops.Add()
        self.dropout = Dropout(config.embedding_dropout_prob)

    def construct(self, input_ids, prompt_embeds=None, position_ids=None):
        x = self.word_embedding(input_ids)
        if prompt_embeds is not None:   # virtual tokens take positions 0..P-1
            x = ops.cat((ops.cast(prompt_embeds, x.dtype), x), 1)
        if position_ids is None:
            positions = ops.arange(0, x.shape[1], 1, dtype=ms.int32)
            x = self.add(x, ops.expand_dims(self.position_embedding(positions), 0))
        else:
            # Packed rows: per-sample positions (B, S), looked up flat so the lookup keeps the
            # rank of the plain range it is declared for ("positions").
            batch, seq = position_ids.shape
            table = self.position_embedding(ops.reshape(position_ids, (-1,)))
            x = self.add(x, ops.reshape(table, (batch, seq, -1)))
        return self.dropout(x)

    def decode(self, input_ids, positions):
        """Embeddings at per-sample positions (B, S): left padding and cached steps."""
        return self.dropout(self.word_embedding(input_ids) + self.position_embedding(positions))


class GPT2Attention(nn.Cell):
    """dense1/2/3 (q, k, v) → attention core → projection; calls the projections as cells only."""
    shard_kind = "heads"

    def __init__(self, config: GPT2Config, dtypes: dict, kernels=None):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        kw = dict(has_bias=True, compute_dtype=dtypes["compute_dtype"],
                  param_init_type=dtypes["param_init_type"],
                  weight_init=Normal(sigma=_INIT_STD, mean=0.0))
        self.dense1 = Linear(hidden, hidden, **kw)
        self.dense2 = Linear(hidden, hidden, **kw)
        self.dense3 = Linear(hidden, hidden, **kw)
        self.projection = LinearInOut(hidden, hidden, True, dtypes["compute_dtype"],
                                      dtypes["param_init_type"])
        self.core = attention_core(kernels, self.head_dim, self.num_heads,
                                   compute_dtype=dtypes["compute_dtype"],
                                   softmax_compute_type=dtypes["softmax_compute_type"],
                                   attention_dropout=config.attention_dropout_rate)
        self.dropout = Dropout(config.hidden_dropout_rate)
        self.split_heads = ops.Transpose()
        self.merge_heads = ops.Transpose()
        heads_by_gather(self, kernels)

    def to_heads(self, x):
        batch, seq, _ = x.shape
        return swap_seq_heads(ops.reshape(x, (batch, seq, self.num_heads, self.head_dim)),
                              self.split_heads, self.gather_heads)

    def construct(self, x, attention_mask, prefix_key_value=None):
        batch, seq, _ = x.shape
        out = self.core(self.to_heads(self.dense1(x)), self.to_heads(self.dense2(x)),
                        self.to_heads(self.dense3(x)), attention_mask, prefix_key_value)
        out = swap_seq_heads(out, self.merge_heads, self.gather_heads)
        out = ops.reshape(out, (batch, seq, -1))
        return self.dropout(self.projection(out))

    def decode(self, x, attention_mask, past=None, write_at=None):
        """Inference with a KV cache (see GPT2LMHeadModel.decode); returns (output, (k, v))."""
        batch, seq, _ = x.shape
        key, value = extend_cache(past, self.to_heads(self.dense2(x)),
                                  self.to_heads(self.dense3(x)), write_at)
        out = self.core(self.to_heads(self.dense1(x)), key, value, attention_mask)
        out = swap_seq_heads(out, self.merge_heads, self.gather_heads)
        out = ops.reshape(out, (batch, seq, -1))
        return self.dropout(self.projection(out)), (key, value)


class GPT2MLP(nn.Cell):
    """projection(act(mapping(x))), both stored in×out; named `output` in the block."""
    shard_kind = "mlp"

    def __init__(self, config: GPT2Config, dtypes: dict):
        super().__init__()
        ffn = config.ffn_hidden_size
        self.mapping = LinearInOut(config.hidden_size, ffn, True, dtypes["compute_dtype"],
                                   dtypes["param_init_type"])
        self.projection = LinearInOut(ffn, config.hidden_size, True, dtypes["compute_dtype"],
                                      dtypes["param_init_type"])
        # GeLU is the tanh approximation (HF's gelu_new)
        self.act = ops.FastGeLU() if config.hidden_act == "fast_gelu" else ops.GeLU()
        self.dropout = Dropout(config.hidden_dropout_rate)

    def construct(self, x):
        return self.dropout(self.projection(self.act(self.mapping(x))))


class GPT2Block(nn.Cell):
    def __init__(self, config: GPT2Config, dtypes: dict, kernels=None):
        super().__init__()
        self.compute_dtype = dtypes["compute_dtype"]
        norm_type = dtypes["layernorm_compute_type"]
        self.layernorm1 = LayerNorm(config.hidden_size, LAYERNORM_EPS, norm_type)
        self.attention = GPT2Attention(config, dtypes, kernels)
        self.layernorm2 = LayerNorm(config.hidden_size, LAYERNORM_EPS, norm_type)
        self.output = GPT2MLP(config, dtypes)
        self.residual = Residual()

    def construct(self, x, attention_mask, prefix_key_value=None):
        h = self.residual(x, ops.cast(self.attention(self.layernorm1(x), attention_mask,
                                                     prefix_key_value), self.compute_dtype))
        return self.residual(h, ops.cast(self.output(self.layernorm2(h)), self.compute_dtype))

    def decode(self, x, attention_mask, past=None, write_at=None):
        attn, present = self.attention.decode(self.layernorm1(x), attention_mask, past, write_at)
        h = self.residual(x, ops.cast(attn, self.compute_dtype))
        out = self.residual(h, ops.cast(self.output(self.layernorm2(h)), self.compute_dtype))
        return out, present


class GPT2Model(nn.Cell):
    """embedding → blocks → final layernorm; returns hidden states (B, S, hidden)."""

    def __init__(self, config: GPT2Config, dtypes: dict, kernels=None):
        super().__init__()
        self.num_layers = config.num_layers
        self.pad_token_id = config.pad_token_id
        self.compute_dtype = dtypes["compute_dtype"]
        self.embedding = GPT2Embedding(config, dtypes)
        self.blocks = nn.CellList([GPT2Block(config, dtypes, kernels)
                                   for _ in range(config.num_layers)])
        self.layernorm = LayerNorm(config.hidden_size, LAYERNORM_EPS,
                                   dtypes["layernorm_compute_type"])

    def construct(self, tokens, prefix_key_values=None, prompt_embeds=None, position_ids=None,
                  segment_ids=None):
        # Causal, pad keys hidden: MindFormers masks pad (= eos for GPT-2) tokens the same way.
        # Packed rows: block-diagonal by segment_ids.
        mask = causal_mask(tokens, self.pad_token_id, segment_ids=segment_ids)
        if prompt_embeds is not None:
            mask = widen_mask(mask, prompt_embeds.shape[1])
        x = ops.cast(self.embedding(tokens, prompt_embeds, position_ids), self.compute_dtype)
        for i in range(self.num_layers):
            if prefix_key_values is None:
                x = self.blocks[i](x, mask)
            else:
                x = self.blocks[i](x, mask, prefix_key_values[i])
        x = self.layernorm(x)
        if prompt_embeds is not None:
            x = x[:, prompt_embeds.shape[1]:]   # virtual tokens yield no hidden states
        return x

    def decode(self, tokens, positions, attention_mask, past=None, write_at=None):
        x = ops.cast(self.embedding.decode(tokens, positions), self.compute_dtype)
        presents = []
        for i in range(self.num_layers):
            x, present = self.blocks[i].decode(x, attention_mask,
                                               None if past is None else past[i], write_at)
            presents.append(present)
        return self.layernorm(x), presents


class GPT2LMHeadModel(nn.Cell):
    """GPT-2 with the tied LM head.

    construct(input_ids, labels=None, prefix_key_values=None, prompt_embeds=None,
              position_ids=None, segment_ids=None):
      labels None  → fp32 logits (batch, seq, vocab) for every position of input_ids.
      labels given → scalar fp32 mean cross-entropy; rows are seq_length + 1 long: tokens =
                     input_ids[:, :-1], targets = labels[:, 1:]; positions whose token is pad or
                     whose target is -100 do not count.
      prefix_key_values: None or one (2, B, num_heads, P, head_dim) entry per layer.
      prompt_embeds: None or (B, P, hidden) virtual-token embeddings put before the tokens
                     (positions 0..P-1; they yield no logits and no loss).
      position_ids, segment_ids: None, or int32 (B, S) as long as input_ids (and cut like it
                     when labels are given) — packed rows (petrun.data.packing): learned
                     positions gathered at position_ids, attention only inside a segment
                     (segment_causal_mask). Not for use with prompt_embeds.
    Dropouts act only in training (set_train(True)); logits for evaluation need set_train(False).
    """

    def __init__(self, config: GPT2Config, device_target: str | None = None):
        super().__init__()
        if device_target is None:
            device_target = ms.get_context("device_target")
        _check(config)
        self.config = config
        self.dtypes = gpt2_dtypes(config, device_target)
        # Flash attention on Ascend behind use_flash_attention; composite elsewhere (kernels.py).
        self.kernels = kernels_for("gpt2", config, device_target)
        self.compute_dtype = self.dtypes["compute_dtype"]
        self.pad_token_id = config.pad_token_id
        self.backbone = GPT2Model(config, self.dtypes, self.kernels)
        self.head = TiedHead("backbone.embedding.word_embedding.embedding_table",
                             self.compute_dtype)
        self.loss = MaskedCrossEntropy(IGNORE_INDEX)

    # What other code sizes itself by, and the two things prompt-learning methods (pet/virtual.py)
    # need from a model: the vocabulary's embedding table and more positions for virtual tokens.
    def dims(self) -> dict:
        c = self.config
        return dict(family="gpt2", num_layers=c.num_layers, kv_heads=c.num_heads,
                    head_dim=c.head_dim, hidden=c.hidden_size, vocab=c.vocab_size,
                    max_positions=c.max_positions, seq_length=c.seq_length)

    def word_embedding(self):
        return self.backbone.embedding.word_embedding.embedding_table

    def extend_positions(self, extra: int, key: str) -> None:
        """The learned position table cannot grow: the virtual tokens and the sequence must fit."""
        from petrun.errors import UserError
        c = self.config
        if c.seq_length + extra > c.max_positions:
            raise UserError(f"{extra} virtual tokens + seq_length {c.seq_length} exceed GPT-2's "
                            f"{c.max_positions} learned positions", key=key,
                            fix=f"lower {key.rsplit('.', 1)[-1]} or model.model_config.seq_length "
                                "so that their sum fits max_position_embeddings")

    def logits(self, hidden):
        table = self.backbone.embedding.word_embedding.embedding_table
        return ops.cast(self.head(hidden, table), ms.float32)

    def construct(self, input_ids, labels=None, prefix_key_values=None, prompt_embeds=None,
                  position_ids=None, segment_ids=None):
        if labels is None:
            return self.logits(self.backbone(input_ids, prefix_key_values, prompt_embeds,
                                             position_ids, segment_ids))
        tokens, targets, position_ids, segment_ids = next_token_inputs(
            input_ids, labels, position_ids, segment_ids)
        logits = self.logits(self.backbone(tokens, prefix_key_values, prompt_embeds, position_ids,
                                           segment_ids))
        loss_mask = ops.logical_and(ops.not_equal(tokens, self.pad_token_id),
                                    ops.not_equal(targets, IGNORE_INDEX))
        return self.loss(logits, targets, loss_mask)

    def decode(self, input_ids, positions, attention_mask, past=None, last_only=False,
               write_at=None):
        """Incremental inference (petrun.infer drives it; training uses construct only).

        input_ids, positions: int32 (B, S); positions index the learned position table per
          sample, so left-padded rows start at 0 where their text starts.
        attention_mask: (B, 1, S, keys), 1 = may attend: the cached keys then these S, or the
          L slots of a fixed-size cache (write_at: (B, heads, 3) int32 [b, n, slot] rows, the
          slot to fill in place; layers.extend_cache).
        past: None, or one (keys, values) per layer, each (B, num_heads, L, head_dim): earlier
          steps and/or a prefix kept at the front.
        Returns (fp32 logits (B, S or 1, vocab), the updated caches).
        """
        hidden, presents = self.backbone.decode(input_ids, positions, attention_mask, past,
                                                write_at)
        if last_only:
            hidden = hidden[:, -1:]
        return self.logits(hidden), presents
