"""Tiny Hugging Face model folders and tokenizers made here, without torch or a download:
safetensors written with numpy under the names and config.json keys the real checkpoints use
(transformers' GPT2LMHeadModel; THUDM's remote-code ChatGLM2, which transformers has no class for).
"""
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from tests.conftest import ROOT

DEMO_SP = ROOT / "data" / "demo" / "tokenizer.model"   # SentencePiece, 512 pieces, Llama ids
H, LAYERS, HEADS = 32, 2, 4

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Valkyria Chronicles III is a tactical role-playing game.",
    "The game began development in 2010, carrying over a large portion of the work.",
    "It met with positive sales in Japan, and was praised by both Japanese and western critics.",
] * 4


def _r(rng, *shape):
    return (0.02 * rng.standard_normal(shape)).astype(np.float32)


def gpt2_bpe(folder: Path, corpus=None) -> int:
    """A byte-level BPE trained here (tokenizers) on `corpus` (default: this module's), saved as
    GPT-2's vocab.json + merges.txt; '<|endoftext|>' is id 0. Returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS if corpus is None else corpus, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(folder))
    return tok.get_vocab_size()


def gpt2_folder(folder: Path, seed: int = 0, n_positions: int = 64) -> Path:
    """transformers' GPT2LMHeadModel layout (transformer.h.N.*, Conv1D [in, out] weights)."""
    rng = np.random.default_rng(seed)
    vocab = gpt2_bpe(folder)
    t = {"transformer.wte.weight": _r(rng, vocab, H), "transformer.wpe.weight": _r(rng, n_positions, H),
         "transformer.ln_f.weight": np.ones(H, np.float32), "transformer.ln_f.bias": _r(rng, H)}
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        t.update({p + "ln_1.weight": np.ones(H, np.float32), p + "ln_1.bias": _r(rng, H),
                  p + "ln_2.weight": np.ones(H, np.float32), p + "ln_2.bias": _r(rng, H),
                  p + "attn.c_attn.weight": _r(rng, H, 3 * H), p + "attn.c_attn.bias": _r(rng, 3 * H),
                  p + "attn.c_proj.weight": _r(rng, H, H), p + "attn.c_proj.bias": _r(rng, H),
                  p + "mlp.c_fc.weight": _r(rng, H, 4 * H), p + "mlp.c_fc.bias": _r(rng, 4 * H),
                  p + "mlp.c_proj.weight": _r(rng, 4 * H, H), p + "mlp.c_proj.bias": _r(rng, H)})
    save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})
    # The keys transformers' GPT2Config writes (values of a tiny model).
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
              "activation_function": "gelu_new", "attn_pdrop": 0.1, "bos_token_id": 0,
              "embd_pdrop": 0.1, "eos_token_id": 0, "initializer_range": 0.02,
              "layer_norm_epsilon": 1e-05, "n_ctx": n_positions, "n_embd": H, "n_head": HEADS,
              "n_inner": None, "n_layer": LAYERS, "n_positions": n_positions,
              "resid_pdrop": 0.1, "vocab_size": vocab, "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


GLM_KV, GLM_GROUPS, GLM_FFN, GLM_VOCAB = 8, 2, 40, 520   # 512 pieces + ChatGLM2's 5 specials fit


def chatglm2_folder(folder: Path, seed: int = 0) -> Path:
    """THUDM's chatglm2-6b layout and config.json keys (MindFormers' ChatGLM2Config names),
    with the demo SentencePiece model as tokenizer.model."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    qkv = HEADS * GLM_KV + 2 * GLM_GROUPS * GLM_KV
    t = {"transformer.embedding.word_embeddings.weight": _r(rng, GLM_VOCAB, H),
         "transformer.rotary_pos_emb.inv_freq": _r(rng, GLM_KV // 4),
         "transformer.encoder.final_layernorm.weight": np.ones(H, np.float32),
         "transformer.output_layer.weight": _r(rng, GLM_VOCAB, H)}
    for i in range(LAYERS):
        p = f"transformer.encoder.layers.{i}."
        t.update({p + "input_layernorm.weight": np.ones(H, np.float32),
                  p + "self_attention.query_key_value.weight": _r(rng, qkv, H),
                  p + "self_attention.query_key_value.bias": _r(rng, qkv),
                  p + "self_attention.dense.weight": _r(rng, H, HEADS * GLM_KV),
                  p + "post_attention_layernorm.weight": np.ones(H, np.float32),
                  p + "mlp.dense_h_to_4h.weight": _r(rng, 2 * GLM_FFN, H),
                  p + "mlp.dense_4h_to_h.weight": _r(rng, H, GLM_FFN)})
    save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {"_name_or_path": "THUDM/chatglm2-6b", "model_type": "chatglm",
              "architectures": ["ChatGLMModel"], "add_bias_linear": False, "add_qkv_bias": True,
              "apply_query_key_layer_scaling": True, "apply_residual_connection_post_layernorm": False,
              "attention_dropout": 0.0, "attention_softmax_in_fp32": True,
              "bias_dropout_fusion": True, "ffn_hidden_size": GLM_FFN,
              "fp32_residual_connection": False, "hidden_dropout": 0.0, "hidden_size": H,
              "kv_channels": GLM_KV, "layernorm_epsilon": 1e-05, "multi_query_attention": True,
              "multi_query_group_num": GLM_GROUPS, "num_attention_heads": HEADS,
              "num_layers": LAYERS, "original_rope": True, "padded_vocab_size": GLM_VOCAB,
              "post_layer_norm": True, "rmsnorm": True, "seq_length": 256, "use_cache": True,
              "torch_dtype": "float32", "tie_word_embeddings": False, "eos_token_id": 2,
              "pad_token_id": 0}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copyfile(DEMO_SP, folder / "tokenizer.model")
    return folder
