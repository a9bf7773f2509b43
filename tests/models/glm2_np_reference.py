"""A float64 numpy ChatGLM2 forward, written independently of petrun's layers.

Rotary: cos/sin over the first kv_channels/2 dims of each head, frequency j at dims (2j, 2j+1);
pairs rotate as complex numbers x[2j] + i·x[2j+1] (THUDM's apply_rotary_pos_emb); the second half
of the head passes through. Keys/values have `groups` heads; query head h reads group h // rep.
"""
import numpy as np

from tests.models.llama_np_reference import attention, rms_norm, silu


def rotary(x, base):
    """x (B, N, S, D): complex rotation of the first D/2 dims, pairwise."""
    d = x.shape[-1]
    rot = d // 2
    pos = np.arange(x.shape[2], dtype=np.float64)
    inv = 1.0 / base ** (np.arange(0, rot, 2, dtype=np.float64) / rot)
    phase = np.exp(1j * np.outer(pos, inv))                      # (S, rot/2)
    z = x[..., 0:rot:2] + 1j * x[..., 1:rot:2]
    z = z * phase
    out = x.copy()
    out[..., 0:rot:2], out[..., 1:rot:2] = z.real, z.imag
    return out


def glm2_forward(P, cfg, ids, prefix=None):
    b, s = ids.shape
    n, g, d = cfg.num_attention_heads, cfg.kv_heads, cfg.kv_channels
    eps = cfg.layernorm_epsilon
    base = 10000.0 * cfg.rope_ratio
    x = P["transformer.embedding.embedding_weight"][ids]
    mask = np.tril(np.ones((s, s), bool))[None, None]
    for i in range(cfg.num_layers):
        pre = f"transformer.encoder.layers.{i}."
        h = rms_norm(x, P[pre + "input_layernorm.weight"], eps)
        qkv = h @ P[pre + "self_attention.query_key_value.weight"].T
        qkv = qkv + P.get(pre + "self_attention.query_key_value.bias", 0.0)
        q, k, v = np.split(qkv, [n * d, n * d + g * d], axis=-1)
        q = q.reshape(b, s, n, d).transpose(0, 2, 1, 3)
        k = k.reshape(b, s, g, d).transpose(0, 2, 1, 3)
        v = v.reshape(b, s, g, d).transpose(0, 2, 1, 3)
        o = attention(rotary(q, base), rotary(k, base), v, mask,
                      None if prefix is None else prefix[i])
        x = x + o.transpose(0, 2, 1, 3).reshape(b, s, n * d) @ P[pre + "self_attention.dense.weight"].T
        h = rms_norm(x, P[pre + "post_attention_layernorm.weight"], eps)
        gate, up = np.split(h @ P[pre + "mlp.dense_h_to_4h.weight"].T, 2, axis=-1)
        x = x + (silu(gate) * up) @ P[pre + "mlp.dense_4h_to_h.weight"].T
    x = rms_norm(x, P["transformer.encoder.final_layernorm.weight"], eps)
    return x @ P["transformer.output_layer.weight"].T


def glm2_loss(P, cfg, ids, labels):
    """Labels already shifted: position i is scored against labels[:, i]; -100 ignored."""
    logits = glm2_forward(P, cfg, ids)
    mask = labels != -100
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.where(mask, labels, 0)[..., None], -1)[..., 0]
    return (nll * mask).sum() / mask.sum()
