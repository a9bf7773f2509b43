"""Prompt tuning (Lester et al. 2021; PEFT's PROMPT_TUNING): num_virtual_tokens trainable input
embeddings put in front of every sequence through the model's `prompt_embeds` hook. The virtual
tokens take positions 0..P-1 (the real tokens follow), are always visible, and yield no logits.

Parameter: mindpet_delta_prompt_tuning_embedding.embedding_table [num_virtual_tokens, hidden]
(PEFT's `prompt_embeddings`). Trainable count: num_virtual_tokens·hidden. Not mergeable.

Initialisation (prompt_tuning_init) reads the base model's word embeddings, so it runs again when
petrun.build.load_checkpoint loads base weights that do not include the prompt (see `after_load`):
  RANDOM        normal with the standard deviation of the word-embedding table;
  SAMPLE_VOCAB  rows of uniformly drawn vocabulary tokens;
  TEXT          rows of the tokens of prompt_tuning_init_text (SentencePiece tokenizer.model at
                tokenizer_name_or_path; with BOS, as PEFT's Llama tokenizer), repeated or cut to
                num_virtual_tokens.
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from petrun.errors import UserError
from petrun.pet import base as pet_base
from petrun.pet import virtual
from petrun.pet.config import PromptTuningConfig
from petrun.pet.ptuning2 import Table

PET_TYPE = "prompt_tuning"


class PromptEmbedding(nn.Cell):
    """[P, hidden] table → (B, P, hidden) prompt embeddings in compute dtype."""

    def __init__(self, num_tokens: int, hidden: int, param_dtype=ms.float32,
                 compute_dtype=ms.float32):
        super().__init__()
        self.num_tokens = int(num_tokens)
        self.hidden = int(hidden)
        self.compute_dtype = compute_dtype
        self.embedding = Table(self.num_tokens, self.hidden, param_dtype)
        self.init_ids = None       # vocabulary rows to start from (TEXT / SAMPLE_VOCAB)
        self.init_mode = "RANDOM"

    def output(self):
        return ops.cast(self.embedding(), self.compute_dtype)

    def construct(self, batch_size):
        x = ops.expand_dims(self.output(), 0)
        return ops.broadcast_to(x, (batch_size, self.num_tokens, self.hidden))


def _seed() -> int:
    seed = ms.get_seed()
    return 0 if seed is None else int(seed)


def text_ids(cfg: PromptTuningConfig, num_tokens: int) -> np.ndarray:
    from petrun.data.tokenizer import SentencePieceTokenizer

    key = f"{pet_base.KEY_PREFIX}.tokenizer_name_or_path"
    tok = SentencePieceTokenizer(cfg.tokenizer_name_or_path, key=key)
    ids = tok.encode(cfg.prompt_tuning_init_text, add_bos=True)
    if not ids:
        raise UserError("prompt_tuning_init_text tokenizes to nothing",
                        key=f"{pet_base.KEY_PREFIX}.prompt_tuning_init_text",
                        fix="give a non-empty text")
    reps = math.ceil(num_tokens / len(ids))
    return np.asarray((ids * reps)[:num_tokens], dtype=np.int64)


def initialise(encoder: PromptEmbedding, word_embedding) -> None:
    """Fill the prompt table from the word-embedding table as encoder.init_mode says."""
    table = word_embedding.asnumpy().astype(np.float32)
    if encoder.init_ids is not None:
        if int(encoder.init_ids.max()) >= table.shape[0]:
            raise UserError(f"the tokenizer produced id {int(encoder.init_ids.max())}, beyond the "
                            f"model's vocabulary of {table.shape[0]}",
                            key=f"{pet_base.KEY_PREFIX}.tokenizer_name_or_path",
                            fix="use the tokenizer the model was trained with")
        rows = table[encoder.init_ids]
    else:
        rng = np.random.default_rng(_seed())
        rows = rng.normal(0.0, float(table.std()) or 1.0, (encoder.num_tokens, encoder.hidden))
    p = encoder.embedding.embedding_table
    p.set_data(Tensor(rows.astype(np.float32), p.dtype))


def after_load(model, loaded: list[str]) -> bool:
    """Re-initialise the prompt from the base embeddings that a load just brought in, unless the
    same load brought the prompt itself. Returns whether it did."""
    encoder = getattr(model, "encoder", None)
    if getattr(model, "pet_type", None) != PET_TYPE or encoder is None:
        return False
    family = virtual.family_of(model.pet_model)
    loaded = set(loaded)
    if family.word_embedding.name in loaded and encoder.embedding.embedding_table.name not in loaded:
        initialise(encoder, family.word_embedding)
        return True
    return False


def apply(net, cfg: PromptTuningConfig) -> pet_base.PetReport:
    pet_base.check_fresh(net, PET_TYPE)
    family = virtual.family_of(net)
    virtual.extend_positions(net, family, cfg.num_virtual_tokens,
                             f"{pet_base.KEY_PREFIX}.num_virtual_tokens")
    param_dtype, compute_dtype = virtual.dtypes_of(net)
    encoder = PromptEmbedding(cfg.num_virtual_tokens, family.hidden, param_dtype, compute_dtype)
    encoder.init_mode = cfg.prompt_tuning_init
    if cfg.prompt_tuning_init == "TEXT":
        encoder.init_ids = text_ids(cfg, cfg.num_virtual_tokens)
    elif cfg.prompt_tuning_init == "SAMPLE_VOCAB":
        encoder.init_ids = np.random.default_rng(_seed()).integers(
            0, family.vocab, cfg.num_virtual_tokens)
    if not getattr(family.word_embedding, "has_init", False):   # skeletons (no_init) have no data
        initialise(encoder, family.word_embedding)
    return virtual.wrap(net, encoder, virtual.PROMPT_HOOK, PET_TYPE, cfg, family)


def parameter_count(family: virtual.Family, cfg: PromptTuningConfig) -> int:
    return cfg.num_virtual_tokens * family.hidden
