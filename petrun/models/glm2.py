"""ChatGLM2 in MindSpore, with MindFormers' parameter names (reference/mindformers.md §6.2).

The attribute tree *is* the checkpoint layout (glm2-6b shapes: hidden 4096, 32 heads of 128,
2 key/value groups, ffn 13696, vocab 65024):

    transformer.embedding.embedding_weight                            [vocab, hidden]
    transformer.encoder.layers.{i}.input_layernorm.weight             [hidden]
    transformer.encoder.layers.{i}.self_attention.query_key_value.weight/.bias
                                                                      [q | k | v, hidden]
    transformer.encoder.layers.{i}.self_attention.dense.weight        [hidden, heads*kv_channels]
    transformer.encoder.layers.{i}.post_attention_layernorm.weight    [hidden]
    transformer.encoder.layers.{i}.mlp.dense_h_to_4h.weight           [gate | up = 2*ffn, hidden]
    transformer.encoder.layers.{i}.mlp.dense_4h_to_h.weight           [hidden, ffn]
    transformer.encoder.final_layernorm.weight                        [hidden]
    transformer.output_layer.weight                                   [vocab, hidden] (untied)

Block (pre-norm RMSNorm): h = x + attention(input_layernorm(x)); out = h + mlp(post_ln(h)).
Attention is multi-query: q has num_attention_heads heads, k and v multi_query_group_num groups
(query head h reads group h // (heads / groups)). Rotary embedding covers only the FIRST half of
each head's dims, rotating interleaved pairs (x[2j], x[2j+1]) — ChatGLM2's layout, so HF weights
need no permutation. Data arrives with labels already shifted (§7.2): the loss compares
logits[:, i] with labels[:, i], ignoring -100.
"""
from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.common.initializer import Normal
from mindspore.ops.auto_generate import SiLU

from petrun.models.broadcast import swap_seq_heads, to_shape_of
from petrun.models.configs import ChatGLM2Config
from petrun.models.dtypes import resolve_dtypes
from petrun.models.kernels import (attention_core, broadcast_first, heads_by_gather, kernels_for,
                                   rms_norm)
from petrun.models.layers import (Dropout, Embedding, Linear, MaskedCrossEntropy, Residual,
                                  causal_mask, extend_cache, prepend_prompt, rows_at)

_KEY = "model.model_config"
IGNORE_INDEX = -100   # MindFormers' GLM2 hard-codes it (labels of prompt and padding)
_INIT_STD = 0.02


def glm2_dtypes(config: ChatGLM2Config, device_target: str | None = None) -> dict:
    """Dtype fields as MindSpore dtypes (bf16 → fp32 on CPU), with MindFormers' defaults:
    softmax in fp32 when attention_softmax_in_fp32, rotary in compute_dtype, residual fp32.
    Defaults are filled after resolving, so the CPU warning names only fields the user set."""
    names = {"compute_dtype": config.compute_dtype, "param_init_type": config.param_init_type,
             "layernorm_compute_type": config.layernorm_compute_type}
    for field in ("softmax_compute_type", "rotary_dtype", "residual_dtype"):
        if getattr(config, field):
            names[field] = getattr(config, field)
    dtypes = resolve_dtypes(names, device_target, key_prefix=_KEY)
    dtypes.setdefault("softmax_compute_type", ms.float32 if config.attention_softmax_in_fp32
                      else dtypes["compute_dtype"])
    dtypes.setdefault("rotary_dtype", dtypes["compute_dtype"])
    dtypes.setdefault("residual_dtype", ms.float32)
    return dtypes


def _check(config: ChatGLM2Config) -> None:
    # The checks live on the config (no MindSpore) so config validate runs them too.
    config.check()


# ---------------------------------------------------------------------------------------------
# Rotary embedding: half of each head, interleaved pairs


def glm2_rope_tables(rotary_dim: int, max_positions: int, base: float = 10000.0):
    """cos, sin float32 [max_positions, rotary_dim]; frequency j is repeated at dims 2j, 2j+1."""
    inv_freq = 1.0 / base ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    angles = np.outer(np.arange(max_positions, dtype=np.float64), inv_freq)
    angles = np.repeat(angles, 2, axis=-1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class InterleavedRotary(nn.Cell):
    """Rotate the first cos.shape[-1] dims of x (B, N, S, D) pairwise; the rest pass through.

    (x0, x1) → (x0·cos − x1·sin, x1·cos + x0·sin) for each pair (x[2j], x[2j+1]), computed in the
    tables' dtype. reshape/split/concat rather than a fused kernel: the only form that runs on CPU.
    """
    shard_kind = "glm2_rotary"
    full_broadcast = False   # CPU: see models/broadcast.py (kernels.broadcast_first sets it)

    def __init__(self):
        super().__init__()
        self.split_pairs = ops.Split(-1, 2)
        self.neg = ops.Neg()
        self.concat_pairs = ops.Concat(-1)
        self.mul_cos = ops.Mul()
        self.mul_sin = ops.Mul()
        self.add = ops.Add()
        self.concat_rest = ops.Concat(-1)

    def construct(self, x, cos, sin):
        original_dtype = x.dtype
        batch, heads, seq, _ = x.shape
        rot = cos.shape[-1]
        x_rot = ops.cast(x[:, :, :, :rot], cos.dtype)
        even, odd = self.split_pairs(ops.reshape(x_rot, (batch, heads, seq, rot // 2, 2)))
        swapped = ops.reshape(self.concat_pairs((self.neg(odd), even)), (batch, heads, seq, rot))
        cos = to_shape_of(cos, x_rot, self.full_broadcast)
        sin = to_shape_of(sin, x_rot, self.full_broadcast)
        rotated = ops.cast(self.add(self.mul_cos(x_rot, cos), self.mul_sin(swapped, sin)),
                           original_dtype)
        return self.concat_rest((rotated, x[:, :, :, rot:]))


class GLM2RotaryEmbedding(nn.Cell):
    """Constant cos/sin tables (no Parameters) sliced per sequence, shaped to broadcast on BNSD."""
    pipeline_place = "first"   # computed once, before the layers

    def __init__(self, rotary_dim: int, max_positions: int, base: float, rotary_dtype=ms.float32):
        super().__init__()
        cos, sin = glm2_rope_tables(rotary_dim, max_positions, base)
        self.cos = Tensor(cos, rotary_dtype)
        self.sin = Tensor(sin, rotary_dtype)

    def construct(self, seq_len):
        cos = ops.reshape(self.cos[:seq_len], (1, 1, seq_len, -1))
        sin = ops.reshape(self.sin[:seq_len], (1, 1, seq_len, -1))
        return cos, sin

    def at(self, positions):
        """Tables for per-sample positions (B, S) → (B, 1, S, rotary_dim) each (decoding)."""
        return rows_at(self.cos, positions), rows_at(self.sin, positions)


# ---------------------------------------------------------------------------------------------
# Layers


def _linear(config, dtypes, n_in, n_out, has_bias):
    return Linear(n_in, n_out, has_bias=has_bias, compute_dtype=dtypes["compute_dtype"],
                  param_init_type=dtypes["param_init_type"],
                  weight_init=Normal(sigma=_INIT_STD, mean=0.0))


class ChatGLM2SelfAttention(nn.Cell):
    """Fused q|k|v projection → rotary → shared attention core → dense.

    Calls `self.query_key_value(x)` / `self.dense(x)` and never reads their weights, so LoRA can
    replace them (`.*query_key_value` adapts the fused projection, as in MindFormers).
    """
    shard_kind = "heads"

    def __init__(self, config: ChatGLM2Config, dtypes: dict, kernels=None):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.n_kv_heads = config.kv_heads
        self.head_dim = config.head_dim
        self.multi_query = bool(config.multi_query_attention)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.n_kv_heads * self.head_dim
        self.query_key_value = _linear(config, dtypes, config.hidden_size,
                                       self.q_size + 2 * self.kv_size,
                                       config.add_bias_linear or config.add_qkv_bias)
        self.dense = _linear(config, dtypes, self.q_size, config.hidden_size,
                             config.add_bias_linear)
        self.core = attention_core(kernels, self.head_dim, self.num_heads, self.n_kv_heads,
                                   compute_dtype=dtypes["compute_dtype"],
                                   softmax_compute_type=dtypes["softmax_compute_type"],
                                   attention_dropout=config.attention_dropout)
        self.apply_rotary = broadcast_first(InterleavedRotary(), kernels)
        self.split_heads = ops.Transpose()
        self.merge_heads = ops.Transpose()
        heads_by_gather(self, kernels)

    def to_heads(self, x, n_heads):
        """(B, S, n*D) → (B, n, S, D)."""
        batch, seq, _ = x.shape
        return swap_seq_heads(ops.reshape(x, (batch, seq, n_heads, self.head_dim)),
                              self.split_heads, self.gather_heads)

    def construct(self, x, cos, sin, attention_mask, prefix_key_value=None):
        batch, seq, _ = x.shape
        query, key, value = self.split_qkv(self.query_key_value(x))
        query = self.apply_rotary(query, cos, sin)
        key = self.apply_rotary(key, cos, sin)
        out = self.core(query, key, value, attention_mask, prefix_key_value)
        out = swap_seq_heads(out, self.merge_heads, self.gather_heads)
        out = ops.reshape(out, (batch, seq, -1))
        return self.dense(out)

    def decode(self, x, cos, sin, attention_mask, past=None, write_at=None):
        """Inference with a KV cache (see ChatGLM2ForConditionalGeneration.decode): returns
        (output, (keys, values)), the cache holding multi_query_group_num heads."""
        batch, seq, _ = x.shape
        query, key, value = self.split_qkv(self.query_key_value(x))
        query = self.apply_rotary(query, cos, sin)
        key, value = extend_cache(past, self.apply_rotary(key, cos, sin), value, write_at)
        out = self.core(query, key, value, attention_mask)
        out = swap_seq_heads(out, self.merge_heads, self.gather_heads)
        out = ops.reshape(out, (batch, seq, -1))
        return self.dense(out), (key, value)

    def split_qkv(self, mixed):
        """Fused projection (B, S, q|k|v) → query (B, N, S, D), key and value (B, Nkv, S, D)."""
        batch, seq, _ = mixed.shape
        if self.multi_query:
            # Rows are all query heads, then the key groups, then the value groups.
            query = self.to_heads(mixed[:, :, :self.q_size], self.num_heads)
            key = self.to_heads(mixed[:, :, self.q_size:self.q_size + self.kv_size],
                                self.n_kv_heads)
            value = self.to_heads(mixed[:, :, self.q_size + self.kv_size:], self.n_kv_heads)
        else:
            # Without MQA the fused rows are grouped per head: [q_h | k_h | v_h] for each head.
            per_head = ops.reshape(mixed, (batch, seq, self.num_heads, 3 * self.head_dim))
            per_head = swap_seq_heads(per_head, self.split_heads, self.gather_heads)
            query, key, value = ops.split(per_head, self.head_dim, -1)
        return query, key, value


class ChatGLM2MLP(nn.Cell):
    """dense_4h_to_h(silu(gate) * up), gate | up being the two halves of dense_h_to_4h."""
    shard_kind = "gated_mlp"

    def __init__(self, config: ChatGLM2Config, dtypes: dict):
        super().__init__()
        self.ffn = config.ffn_hidden_size
        self.dense_h_to_4h = _linear(config, dtypes, config.hidden_size, 2 * self.ffn,
                                     config.add_bias_linear)
        self.dense_4h_to_h = _linear(config, dtypes, self.ffn, config.hidden_size,
                                     config.add_bias_linear)
        self.act = SiLU()
        self.mul = ops.Mul()

    def construct(self, x):
        fused = self.dense_h_to_4h(x)
        gated = self.mul(self.act(fused[:, :, :self.ffn]), fused[:, :, self.ffn:])
        return self.dense_4h_to_h(gated)


class ChatGLM2Block(nn.Cell):
    def __init__(self, config: ChatGLM2Config, dtypes: dict, kernels=None):
        super().__init__()
        self.compute_dtype = dtypes["compute_dtype"]
        self.residual_dtype = dtypes["residual_dtype"]
        self.post_ln_residual = bool(config.apply_residual_connection_post_layernorm)
        norm_type = dtypes["layernorm_compute_type"]
        eps = config.layernorm_epsilon
        self.input_layernorm = rms_norm(kernels, config.hidden_size, eps, norm_type)
        self.self_attention = ChatGLM2SelfAttention(config, dtypes, kernels)
        self.post_attention_layernorm = rms_norm(kernels, config.hidden_size, eps, norm_type)
        self.mlp = ChatGLM2MLP(config, dtypes)
        self.hidden_dropout = Dropout(config.hidden_dropout)
        self.residual = Residual()

    def construct(self, x, cos, sin, attention_mask, prefix_key_value=None):
        normed = ops.cast(self.input_layernorm(x), self.compute_dtype)
        attn = self.self_attention(normed, cos, sin, attention_mask, prefix_key_value)
        residual = normed if self.post_ln_residual else x
        h = self.residual(ops.cast(residual, self.residual_dtype),
                          ops.cast(self.hidden_dropout(attn), self.residual_dtype))
        normed = ops.cast(self.post_attention_layernorm(h), self.compute_dtype)
        residual = normed if self.post_ln_residual else h
        return self.residual(ops.cast(residual, self.residual_dtype),
                             ops.cast(self.hidden_dropout(self.mlp(normed)), self.residual_dtype))

    def decode(self, x, cos, sin, attention_mask, past=None, write_at=None):
        """construct's block with the attention's KV cache; returns (output, (keys, values))."""
        normed = ops.cast(self.input_layernorm(x), self.compute_dtype)
        attn, present = self.self_attention.decode(normed, cos, sin, attention_mask, past,
                                                   write_at)
        residual = normed if self.post_ln_residual else x
        h = self.residual(ops.cast(residual, self.residual_dtype),
                          ops.cast(self.hidden_dropout(attn), self.residual_dtype))
        normed = ops.cast(self.post_attention_layernorm(h), self.compute_dtype)
        residual = normed if self.post_ln_residual else h
        out = self.residual(ops.cast(residual, self.residual_dtype),
                            ops.cast(self.hidden_dropout(self.mlp(normed)), self.residual_dtype))
        return out, present


class ChatGLM2Transformer(nn.Cell):
    """The encoder: `layers` then `final_layernorm` (when post_layer_norm)."""

    def __init__(self, config: ChatGLM2Config, dtypes: dict, kernels=None):
        super().__init__()
        self.num_layers = config.num_layers
        self.post_layer_norm = bool(config.post_layer_norm)
        self.layers = nn.CellList([ChatGLM2Block(config, dtypes, kernels)
                                   for _ in range(config.num_layers)])
        if self.post_layer_norm:
            self.final_layernorm = rms_norm(kernels, config.hidden_size, config.layernorm_epsilon,
                                            dtypes["layernorm_compute_type"])

    def construct(self, x, cos, sin, attention_mask, prefix_key_values=None):
        for i in range(self.num_layers):
            if prefix_key_values is None:
                x = self.layers[i](x, cos, sin, attention_mask)
            else:
                x = self.layers[i](x, cos, sin, attention_mask, prefix_key_values[i])
        if self.post_layer_norm:
            x = self.final_layernorm(x)
        return x

    def decode(self, x, cos, sin, attention_mask, past=None, write_at=None):
        presents = []
        for i in range(self.num_layers):
            x, present = self.layers[i].decode(x, cos, sin, attention_mask,
                                               None if past is None else past[i], write_at)
            presents.append(present)
        if self.post_layer_norm:
            x = self.final_layernorm(x)
        return x, presents


class ChatGLM2Model(nn.Cell):
    """embedding → encoder → hidden states (B, S, hidden); holds the output_layer like MindFormers
    (so LoRA, which walks this submodule, sees it — `.*query_key_value` does not match it)."""

    def __init__(self, config: ChatGLM2Config, dtypes: dict, kernels=None):
        super().__init__()
        self.residual_dtype = dtypes["residual_dtype"]
        self.embedding = Embedding(config.vocab, config.hidden_size,
                                   param_init_type=dtypes["param_init_type"],
                                   embedding_init=Normal(sigma=_INIT_STD, mean=0.0))
        self.rotary_pos_emb = GLM2RotaryEmbedding(config.head_dim // 2, config.seq_length,
                                                  10000.0 * float(config.rope_ratio),
                                                  dtypes["rotary_dtype"])
        self.encoder = ChatGLM2Transformer(config, dtypes, kernels)
        self.output_layer = _linear(config, dtypes, config.hidden_size, config.vocab, False)

    def construct(self, input_ids, prefix_key_values=None, prompt_embeds=None, position_ids=None,
                  segment_ids=None):
        # Causal only: MindFormers' GLM2 training builds no padding mask (padding is right-hand
        # and its labels are -100). Packed rows: block-diagonal by segment_ids.
        mask = causal_mask(input_ids, segment_ids=segment_ids)
        x = ops.cast(self.embedding(input_ids), self.residual_dtype)
        if prompt_embeds is None:
            if position_ids is None:
                cos, sin = self.rotary_pos_emb(input_ids.shape[1])
            else:
                cos, sin = self.rotary_pos_emb.at(position_ids)
            return self.encoder(x, cos, sin, mask, prefix_key_values)
        x, mask = prepend_prompt(x, mask, prompt_embeds)
        cos, sin = self.rotary_pos_emb(x.shape[1])
        hidden = self.encoder(x, cos, sin, mask, prefix_key_values)
        return hidden[:, prompt_embeds.shape[1]:]   # virtual tokens yield no hidden states

    def decode(self, input_ids, positions, attention_mask, past=None, write_at=None):
        cos, sin = self.rotary_pos_emb.at(positions)
        x = ops.cast(self.embedding(input_ids), self.residual_dtype)
        return self.encoder.decode(x, cos, sin, attention_mask, past, write_at)


class ChatGLM2ForConditionalGeneration(nn.Cell):
    """ChatGLM2 with its output layer.

    construct(input_ids, labels=None, prefix_key_values=None, prompt_embeds=None,
              position_ids=None, segment_ids=None):
      labels None  → fp32 logits (batch, seq, vocab) for every position of input_ids.
      labels given → scalar fp32 mean cross-entropy of logits[:, i] against labels[:, i]
                     (labels arrive shifted, as MindFormers' GLM2 datasets make them; rows are
                     seq_length long), positions labelled -100 not counted.
      prefix_key_values: None or one (2, B, multi_query_group_num, P, kv_channels) per layer.
      prompt_embeds: None or (B, P, hidden) virtual-token embeddings put before the tokens
                     (positions 0..P-1; they yield no logits and no loss).
      position_ids, segment_ids: None, or int32 (B, S) as long as input_ids (used as they are:
                     labels are pre-shifted) — packed rows (petrun.data.packing): rotary at
                     position_ids, attention only inside a segment (segment_causal_mask). Not
                     for use with prompt_embeds.
    """

    def __init__(self, config: ChatGLM2Config, device_target: str | None = None):
        super().__init__()
        if device_target is None:
            device_target = ms.get_context("device_target")
        _check(config)
        self.config = config
        self.dtypes = glm2_dtypes(config, device_target)
        # Fused Ascend kernels behind MindFormers' switches; composite elsewhere (kernels.py).
        self.kernels = kernels_for("glm2", config, device_target)
        self.transformer = ChatGLM2Model(config, self.dtypes, self.kernels)
        self.loss = MaskedCrossEntropy(IGNORE_INDEX)

    # What other code sizes itself by, and the two things prompt-learning methods (pet/virtual.py)
    # need from a model: the vocabulary's embedding table and more positions for virtual tokens.
    def dims(self) -> dict:
        c = self.config
        return dict(family="glm2", num_layers=c.num_layers, kv_heads=c.kv_heads,
                    head_dim=c.head_dim, hidden=c.hidden_size, vocab=c.vocab,
                    max_positions=c.seq_length, seq_length=c.seq_length)

    def word_embedding(self):
        return self.transformer.embedding.embedding_weight

    def extend_positions(self, extra: int, key: str) -> None:
        """Number `extra` more positions: the rotary table is a constant, rebuilt longer."""
        c = self.config
        self.transformer.rotary_pos_emb = GLM2RotaryEmbedding(
            c.head_dim // 2, c.seq_length + extra, 10000.0 * float(c.rope_ratio),
            self.dtypes["rotary_dtype"])

    def construct(self, input_ids, labels=None, prefix_key_values=None, prompt_embeds=None,
                  position_ids=None, segment_ids=None):
        hidden = self.transformer(input_ids, prefix_key_values, prompt_embeds, position_ids,
                                  segment_ids)
        logits = ops.cast(self.transformer.output_layer(hidden), ms.float32)
        if labels is None:
            return logits
        return self.loss(logits, labels)

    def decode(self, input_ids, positions, attention_mask, past=None, last_only=False,
               write_at=None):
        """Incremental inference (petrun.infer drives it; training uses construct only).

        input_ids, positions: int32 (B, S), positions per sample (left padding, cached steps).
        attention_mask: (B, 1, S, keys), 1 = may attend: the cached keys then these S, or the
          L slots of a fixed-size cache (write_at: (B, heads, 3) int32 [b, n, slot] rows, the
          slot to fill in place; layers.extend_cache).
        past: None, or one (keys, values) per layer, each (B, multi_query_group_num, L,
          kv_channels): earlier steps and/or a P-Tuning v2 prefix kept at the front, so the valid
          length counts pre_seq_len as in MindFormers' ChatGLM2WithPtuning2.
        Returns (fp32 logits (B, S or 1, vocab), the updated caches).
        """
        hidden, presents = self.transformer.decode(input_ids, positions, attention_mask, past,
                                                   write_at)
        if last_only:
            hidden = hidden[:, -1:]
        return ops.cast(self.transformer.output_layer(hidden), ms.float32), presents
