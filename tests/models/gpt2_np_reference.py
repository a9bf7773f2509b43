"""A float64 numpy GPT-2 forward on MindFormers' parameter names, independent of petrun.

dense1-3 are [out, in] (x @ W.T); projection, mapping and output.projection are [in, out]
(x @ W); GeLU is the tanh approximation or x·sigmoid(1.702x) for fast_gelu; LayerNorm eps 1e-5.
"""
import numpy as np

from tests.models.llama_np_reference import attention


def layer_norm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def gelu(x, fast=False):
    if fast:
        return x / (1.0 + np.exp(-1.702 * x))
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def gpt2_forward(P, cfg, ids, prefix=None):
    b, s = ids.shape
    n, d = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    emb = "backbone.embedding."
    x = P[emb + "word_embedding.embedding_table"][ids] + \
        P[emb + "position_embedding.embedding_table"][:s][None]
    mask = np.tril(np.ones((s, s), bool))[None, None] & (ids != cfg.pad_token_id)[:, None, None, :]
    for i in range(cfg.num_layers):
        pre = f"backbone.blocks.{i}."
        h = layer_norm(x, P[pre + "layernorm1.gamma"], P[pre + "layernorm1.beta"])

        def heads(j):
            w, bias = P[f"{pre}attention.dense{j}.weight"], P[f"{pre}attention.dense{j}.bias"]
            return (h @ w.T + bias).reshape(b, s, n, d).transpose(0, 2, 1, 3)

        o = attention(heads(1), heads(2), heads(3), mask, None if prefix is None else prefix[i])
        o = o.transpose(0, 2, 1, 3).reshape(b, s, n * d)
        x = x + o @ P[pre + "attention.projection.weight"] + P[pre + "attention.projection.bias"]
        h = layer_norm(x, P[pre + "layernorm2.gamma"], P[pre + "layernorm2.beta"])
        h = gelu(h @ P[pre + "output.mapping.weight"] + P[pre + "output.mapping.bias"],
                 cfg.hidden_act == "fast_gelu")
        x = x + h @ P[pre + "output.projection.weight"] + P[pre + "output.projection.bias"]
    x = layer_norm(x, P["backbone.layernorm.gamma"], P["backbone.layernorm.beta"])
    return x @ P[emb + "word_embedding.embedding_table"].T


def gpt2_loss(P, cfg, input_ids, labels):
    tokens, targets = input_ids[:, :-1], labels[:, 1:]
    logits = gpt2_forward(P, cfg, tokens)
    mask = (targets != -100) & (tokens != cfg.pad_token_id)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.where(mask, targets, 0)[..., None], -1)[..., 0]
    return (nll * mask).sum() / mask.sum()
