"""Llama / Llama 2 decoder in MindSpore, with MindFormers' parameter names.

The attribute tree *is* the checkpoint layout (reference/mindformers.md §6.1):

    model.tok_embeddings.embedding_weight                  [vocab, hidden]
    model.layers.{i}.attention_norm.weight                 [hidden]
    model.layers.{i}.attention.wq|wk|wv|wo.weight          [out, in]; wk/wv out = n_kv_heads*head_dim
    model.layers.{i}.ffn_norm.weight                       [hidden]
    model.layers.{i}.feed_forward.w1|w3.weight             [ffn, hidden]; w2.weight [hidden, ffn]
    model.norm_out.weight                                  [hidden]
    lm_head.weight                                         [vocab, hidden]  (absent when tied)

Block (pre-norm): h = x + attention(attention_norm(x)); out = h + feed_forward(ffn_norm(h)).
RoPE uses the HF rotate-half layout, so HF weights load without permutation.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Normal

from petrun.models.broadcast import swap_seq_heads
from petrun.models.configs import LlamaConfig
from petrun.models.dtypes import resolve_dtypes
from petrun.models.kernels import attention_core, heads_by_gather, kernels_for, rms_norm, rotary
from petrun.models.layers import (Embedding, Linear, MaskedCrossEntropy, Residual,
                                  RotaryEmbedding, SwiGLU, TiedHead, causal_mask, extend_cache,
                                  next_token_inputs, prepend_prompt)

_KEY = "model.model_config"


def llama_dtypes(config: LlamaConfig, device_target: str | None = None) -> dict:
    """The config's dtype fields as MindSpore dtypes for `device_target` (bf16 → fp32 on CPU).

    embedding_init_type defaults to param_init_type and residual_dtype to compute_dtype, as in
    MindFormers; the defaults are filled after resolving so the CPU warning names only the
    fields the user actually set.
    """
    names = {"compute_dtype": config.compute_dtype, "param_init_type": config.param_init_type,
             "softmax_compute_type": config.softmax_compute_type,
             "layernorm_compute_type": config.layernorm_compute_type,
             "rotary_dtype": config.rotary_dtype or config.compute_dtype}
    if config.embedding_init_type:
        names["embedding_init_type"] = config.embedding_init_type
    if config.residual_dtype:
        names["residual_dtype"] = config.residual_dtype
    dtypes = resolve_dtypes(names, device_target, key_prefix=_KEY)
    dtypes.setdefault("embedding_init_type", dtypes["param_init_type"])
    dtypes.setdefault("residual_dtype", dtypes["compute_dtype"])
    return dtypes


def _check(config: LlamaConfig) -> None:
    # The checks live on the config (no MindSpore) so config validate runs them too.
    config.check()


class LlamaAttention(nn.Cell):
    """Projections + RoPE around the shared DotProductAttention core.

    Calls `self.wq(x)` etc. and never touches their weights, so PET can swap the projections.
    """
    shard_kind = "heads"

    def __init__(self, config: LlamaConfig, dtypes: dict, kernels=None):
        super().__init__()
        self.num_heads = config.num_heads
        self.n_kv_heads = config.kv_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        kw = dict(compute_dtype=dtypes["compute_dtype"], param_init_type=dtypes["param_init_type"],
                  weight_init=Normal(sigma=config.init_method_std, mean=0.0))
        q_out, kv_out = self.num_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.wq = Linear(hidden, q_out, has_bias=config.qkv_has_bias, **kw)
        self.wk = Linear(hidden, kv_out, has_bias=config.qkv_has_bias, **kw)
        self.wv = Linear(hidden, kv_out, has_bias=config.qkv_has_bias, **kw)
        self.wo = Linear(q_out, hidden, has_bias=config.attn_proj_has_bias, **kw)
        self.core = attention_core(kernels, self.head_dim, self.num_heads, self.n_kv_heads,
                                   compute_dtype=dtypes["compute_dtype"],
                                   softmax_compute_type=dtypes["softmax_compute_type"])
        self.apply_rotary = rotary(kernels, self.head_dim, dtypes["rotary_dtype"])
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
        query = self.apply_rotary(self.to_heads(self.wq(x), self.num_heads), cos, sin)
        key = self.apply_rotary(self.to_heads(self.wk(x), self.n_kv_heads), cos, sin)
        value = self.to_heads(self.wv(x), self.n_kv_heads)
        out = self.core(query, key, value, attention_mask, prefix_key_value)
        out = swap_seq_heads(out, self.merge_heads, self.gather_heads)
        out = ops.reshape(out, (batch, seq, -1))
        return self.wo(out)

    def decode(self, x, cos, sin, attention_mask, past=None, write_at=None):
        """Inference with a KV cache: this call's keys/values are added to `past` (see
        extend_cache); attention_mask covers every key. Returns (output, (keys, values)),
        the cache holding n_kv_heads heads (GQA is expanded only inside the core)."""
        batch, seq, _ = x.shape
        query = self.apply_rotary(self.to_heads(self.wq(x), self.num_heads), cos, sin)
        key = self.apply_rotary(self.to_heads(self.wk(x), self.n_kv_heads), cos, sin)
        key, value = extend_cache(past, key, self.to_heads(self.wv(x), self.n_kv_heads),
                                  write_at)
        out = self.core(query, key, value, attention_mask)
        out = swap_seq_heads(out, self.merge_heads, self.gather_heads)
        out = ops.reshape(out, (batch, seq, -1))
        return self.wo(out), (key, value)


class LlamaDecodeLayer(nn.Cell):
    def __init__(self, config: LlamaConfig, dtypes: dict, kernels=None):
        super().__init__()
        self.residual_dtype = dtypes["residual_dtype"]
        norm_type = dtypes["layernorm_compute_type"]
        self.attention_norm = rms_norm(kernels, config.hidden_size, config.rms_norm_eps, norm_type)
        self.attention = LlamaAttention(config, dtypes, kernels)
        self.ffn_norm = rms_norm(kernels, config.hidden_size, config.rms_norm_eps, norm_type)
        self.feed_forward = SwiGLU(config.hidden_size, config.ffn_hidden_size,
                                   compute_dtype=dtypes["compute_dtype"],
                                   param_init_type=dtypes["param_init_type"],
                                   weight_init=Normal(sigma=config.init_method_std, mean=0.0))
        self.residual = Residual()

    def construct(self, x, cos, sin, attention_mask, prefix_key_value=None):
        attn = self.attention(self.attention_norm(x), cos, sin, attention_mask, prefix_key_value)
        h = self.residual(x, ops.cast(attn, self.residual_dtype))
        return self.residual(h, ops.cast(self.feed_forward(self.ffn_norm(h)), self.residual_dtype))

    def decode(self, x, cos, sin, attention_mask, past=None, write_at=None):
        attn, present = self.attention.decode(self.attention_norm(x), cos, sin, attention_mask,
                                              past, write_at)
        h = self.residual(x, ops.cast(attn, self.residual_dtype))
        out = self.residual(h, ops.cast(self.feed_forward(self.ffn_norm(h)), self.residual_dtype))
        return out, present


class LlamaModel(nn.Cell):
    """Embedding → decoder layers → final norm; returns hidden states (B, S, hidden)."""

    def __init__(self, config: LlamaConfig, dtypes: dict, kernels=None):
        super().__init__()
        self.num_layers = config.num_layers
        self.pad_token_id = config.pad_token_id
        self.residual_dtype = dtypes["residual_dtype"]
        self.tok_embeddings = Embedding(config.vocab_size, config.hidden_size,
                                        param_init_type=dtypes["embedding_init_type"],
                                        embedding_init=Normal(sigma=config.init_method_std,
                                                              mean=0.0))
        self.layers = nn.CellList([LlamaDecodeLayer(config, dtypes, kernels)
                                   for _ in range(config.num_layers)])
        self.norm_out = rms_norm(kernels, config.hidden_size, config.rms_norm_eps,
                                 dtypes["layernorm_compute_type"])
        self.rotary = RotaryEmbedding(config.head_dim, config.max_positions, config.theta,
                                      config.extend_method, config.scaling_factor,
                                      dtypes["rotary_dtype"])

    def construct(self, tokens, prefix_key_values=None, prompt_embeds=None, position_ids=None,
                  segment_ids=None):
        mask = causal_mask(tokens, self.pad_token_id, segment_ids=segment_ids)
        x = ops.cast(self.tok_embeddings(tokens), self.residual_dtype)
        if prompt_embeds is not None:
            x, mask = prepend_prompt(x, mask, prompt_embeds)
        if position_ids is None:
            cos, sin = self.rotary(x.shape[1])
        else:
            cos, sin = self.rotary.at(position_ids)
        for i in range(self.num_layers):
            if prefix_key_values is None:
                x = self.layers[i](x, cos, sin, mask)
            else:
                x = self.layers[i](x, cos, sin, mask, prefix_key_values[i])
        x = self.norm_out(x)
        if prompt_embeds is not None:
            x = x[:, prompt_embeds.shape[1]:]   # virtual tokens yield no hidden states
        return x

    def decode(self, tokens, positions, attention_mask, past=None, write_at=None):
        """Hidden states and the per-layer caches; see LlamaForCausalLM.decode."""
        cos, sin = self.rotary.at(positions)
        x = ops.cast(self.tok_embeddings(tokens), self.residual_dtype)
        presents = []
        for i in range(self.num_layers):
            x, present = self.layers[i].decode(x, cos, sin, attention_mask,
                                               None if past is None else past[i], write_at)
            presents.append(present)
        return self.norm_out(x), presents


class LlamaForCausalLM(nn.Cell):
    """Llama 2 with an LM head.

    construct(input_ids, labels=None, prefix_key_values=None, prompt_embeds=None,
              position_ids=None, segment_ids=None):
      labels None  → fp32 logits (batch, seq, vocab) for every position of input_ids.
      labels given → scalar fp32 mean cross-entropy, MindFormers style: rows are seq_length + 1
                     long; tokens = input_ids[:, :-1], targets = labels[:, 1:], positions whose
                     token is pad or whose target is ignore_token_id do not count.
      prefix_key_values: None or one (2, B, n_kv_heads, P, head_dim) entry per layer.
      prompt_embeds: None or (B, P, hidden) virtual-token embeddings put before the tokens
                     (positions 0..P-1; they yield no logits and no loss).
      position_ids, segment_ids: None, or int32 (B, S) as long as input_ids (and cut like it
                     when labels are given) — packed rows (petrun.data.packing): RoPE at
                     position_ids, attention only inside a segment (segment_causal_mask). Not
                     for use with prompt_embeds.
    """

    def __init__(self, config: LlamaConfig, device_target: str | None = None):
        super().__init__()
        if device_target is None:
            device_target = ms.get_context("device_target")
        _check(config)
        self.config = config
        self.dtypes = llama_dtypes(config, device_target)
        # Fused Ascend kernels behind MindFormers' switches; composite elsewhere (kernels.py).
        self.kernels = kernels_for("llama2", config, device_target)
        self.compute_dtype = self.dtypes["compute_dtype"]
        self.pad_token_id = config.pad_token_id
        self.ignore_token_id = config.ignore_token_id
        self.tie_word_embeddings = bool(config.tie_word_embeddings)
        self.max_positions = config.max_positions
        self.model = LlamaModel(config, self.dtypes, self.kernels)
        if not self.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, has_bias=False,
                                  compute_dtype=self.compute_dtype,
                                  param_init_type=self.dtypes["param_init_type"],
                                  weight_init=Normal(sigma=config.init_method_std, mean=0.0))
        else:
            # Tied: the embedding table is the output projection; no separate lm_head parameter.
            self.tied_head = TiedHead("model.tok_embeddings.embedding_weight", self.compute_dtype)
        self.loss = MaskedCrossEntropy(config.ignore_token_id)

    # What other code sizes itself by, and the two things prompt-learning methods (pet/virtual.py)
    # need from a model: the vocabulary's embedding table and more positions for virtual tokens.
    def dims(self) -> dict:
        c = self.config
        return dict(family="llama2", num_layers=c.num_layers, kv_heads=c.kv_heads,
                    head_dim=c.head_dim, hidden=c.hidden_size, vocab=c.vocab_size,
                    max_positions=c.max_positions, seq_length=c.seq_length)

    def word_embedding(self):
        return self.model.tok_embeddings.embedding_weight

    def extend_positions(self, extra: int, key: str) -> None:
        """Number `extra` more positions: the rotary table is a constant, rebuilt longer."""
        c, old = self.config, self.model.rotary
        self.model.rotary = RotaryEmbedding(c.head_dim, old.max_positions + extra, c.theta,
                                            c.extend_method, c.scaling_factor,
                                            self.dtypes["rotary_dtype"])

    def logits(self, hidden):
        if self.tie_word_embeddings:
            out = self.tied_head(hidden, self.model.tok_embeddings.embedding_weight)
        else:
            out = self.lm_head(hidden)
        return ops.cast(out, ms.float32)

    def construct(self, input_ids, labels=None, prefix_key_values=None, prompt_embeds=None,
                  position_ids=None, segment_ids=None):
        if labels is None:
            return self.logits(self.model(input_ids, prefix_key_values, prompt_embeds,
                                          position_ids, segment_ids))
        tokens, targets, position_ids, segment_ids = next_token_inputs(
            input_ids, labels, position_ids, segment_ids)
        logits = self.logits(self.model(tokens, prefix_key_values, prompt_embeds, position_ids,
                                        segment_ids))
        loss_mask = ops.logical_and(ops.not_equal(tokens, self.pad_token_id),
                                    ops.not_equal(targets, self.ignore_token_id))
        return self.loss(logits, targets, loss_mask)

    def decode(self, input_ids, positions, attention_mask, past=None, last_only=False,
               write_at=None):
        """Incremental inference (petrun.infer drives it; training uses construct only).

        input_ids, positions: int32 (B, S) — positions per sample, so left-padded rows and
          cached steps rotate at their true offsets.
        attention_mask: (B, 1, S, keys), 1 = may attend: over the cached keys then these S
          (growing cache), or over the L slots of a fixed-size cache (write_at given).
        past: None, or one (keys, values) per layer, each (B, n_kv_heads, L, head_dim): earlier
          steps' caches and/or a prefix (P-Tuning v2 / prefix tuning) kept at the front.
        write_at: None, or (B, n_kv_heads, 3) int32 [b, n, slot] rows: the slot this single token
          fills in place (past then holds Parameters; layers.extend_cache).
        Returns (fp32 logits (B, S or 1, vocab), the updated caches).
        """
        hidden, presents = self.model.decode(input_ids, positions, attention_mask, past,
                                             write_at)
        if last_only:
            hidden = hidden[:, -1:]
        return self.logits(hidden), presents
