"""A straightforward float64 numpy Llama forward, written independently of petrun's layers.

GQA repeats kv heads with np.repeat (head h reads kv head h // rep), RoPE rotates the pairs
(i, i + d/2) as HF's rotate_half does, masking uses -inf (tests avoid fully masked rows).
"""
import numpy as np


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_cos_sin(seq, d, theta=10000.0, positions=None):
    pos = np.arange(seq, dtype=np.float64) if positions is None else positions
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.outer(pos, inv)
    ang = np.concatenate([ang, ang], -1)
    return np.cos(ang), np.sin(ang)


def hf_rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], -1)


def hf_apply_rotary(x, cos, sin):
    return x * cos + hf_rotate_half(x) * sin


def softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def attention(q, k, v, mask, prefix=None):
    """q (B,N,S,D), k/v (B,Nkv,S,D), mask (B|1,1,S,S) bool, prefix (2,B,Nkv,P,D) or None."""
    if prefix is not None:
        k = np.concatenate([prefix[0], k], 2)
        v = np.concatenate([prefix[1], v], 2)
        p = prefix.shape[3]
        mask = np.concatenate([np.ones(mask.shape[:3] + (p,), bool), mask], -1)
    rep = q.shape[1] // k.shape[1]
    k = np.repeat(k, rep, axis=1)
    v = np.repeat(v, rep, axis=1)
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    s = np.where(mask, s, -np.inf)
    return softmax(s) @ v


def silu(x):
    return x / (1.0 + np.exp(-x))


def llama_forward(P, cfg, ids, prefix=None):
    """Logits (B, S, vocab) for token ids (B, S); P maps MindFormers names to float64 arrays."""
    b, s = ids.shape
    n, nkv, d = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    eps = cfg.rms_norm_eps
    x = P["model.tok_embeddings.embedding_weight"][ids]
    cos, sin = rope_cos_sin(s, d, cfg.theta)
    mask = np.tril(np.ones((s, s), bool))[None, None] & (ids != cfg.pad_token_id)[:, None, None, :]

    def lin(name, h):
        out = h @ P[name + ".weight"].T
        return out + P[name + ".bias"] if name + ".bias" in P else out

    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}."
        h = rms_norm(x, P[pre + "attention_norm.weight"], eps)
        q = lin(pre + "attention.wq", h).reshape(b, s, n, d).transpose(0, 2, 1, 3)
        k = lin(pre + "attention.wk", h).reshape(b, s, nkv, d).transpose(0, 2, 1, 3)
        v = lin(pre + "attention.wv", h).reshape(b, s, nkv, d).transpose(0, 2, 1, 3)
        q, k = hf_apply_rotary(q, cos, sin), hf_apply_rotary(k, cos, sin)
        o = attention(q, k, v, mask, None if prefix is None else prefix[i])
        x = x + lin(pre + "attention.wo", o.transpose(0, 2, 1, 3).reshape(b, s, n * d))
        h = rms_norm(x, P[pre + "ffn_norm.weight"], eps)
        x = x + lin(pre + "feed_forward.w2",
                    silu(lin(pre + "feed_forward.w1", h)) * lin(pre + "feed_forward.w3", h))
    x = rms_norm(x, P["model.norm_out.weight"], eps)
    head = P.get("lm_head.weight", P["model.tok_embeddings.embedding_weight"])
    return x @ head.T


def llama_loss(P, cfg, input_ids, labels, prefix=None, use_pad_mask=True):
    tokens, targets = input_ids[:, :-1], labels[:, 1:]
    logits = llama_forward(P, cfg, tokens, prefix)
    mask = targets != cfg.ignore_token_id
    if use_pad_mask:
        mask &= tokens != cfg.pad_token_id
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    safe = np.where(mask, targets, 0)
    nll = -np.take_along_axis(logp, safe[..., None], -1)[..., 0]
    return (nll * mask).sum() / mask.sum()
