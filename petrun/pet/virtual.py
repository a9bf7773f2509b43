"""What the prompt-learning methods share: the wrapper that feeds an encoder's output into one of
the model's hooks, the model dimensions the encoders are sized by, and parameter naming.

    prefix methods (ptuning2, prefixtuning): encoder(batch) → (L, 2, B, n_kv_heads, P, head_dim),
        passed as `prefix_key_values` (one (2, B, n_kv, P, D) key/value pair per layer);
    prompt methods (prompt_tuning, ptuning): encoder(batch) → (B, P, hidden), passed as
        `prompt_embeds` (virtual-token embeddings put in front of the token embeddings).

The wrapper has auto_prefix=False, as MindFormers' PetModel, so the base model's parameter names do
not change (`model.layers.0...` stays) and the encoder's parameters get MindFormers-style names set
explicitly: `[prefix_encoder.]mindpet_delta_<pet_type>_<attribute path>`. Never call
pet_base.refresh_parameter_names on the wrapper: it would prepend `pet_model.` to every name.

Prefixes are sized by the key/value heads (GQA/MQA aware, as PEFT): width 2·L·n_kv·head_dim.
For ChatGLM2 that is MindFormers' num_layers·2·kv_channels·multi_query_group_num; for a Llama
with n_kv_heads < num_heads it is narrower than MindFormers' (which sizes by num_heads).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from mindspore import Parameter, nn

from petrun.errors import UserError
from petrun.pet import base as pet_base

PREFIX_HOOK = "prefix_key_values"
PROMPT_HOOK = "prompt_embeds"


@dataclass
class Family:
    """The dimensions of a petrun model that the encoders are sized by."""
    name: str                 # llama2 | glm2 | gpt2 (petrun.ckpt.hf family names)
    num_layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    max_positions: int        # positions the model can number (prompt tokens use some)
    seq_length: int
    word_embedding: Parameter
    encoder_prefix: str       # parent name of the prefix encoder's parameters

    @property
    def prefix_width(self) -> int:
        return 2 * self.num_layers * self.kv_heads * self.head_dim


# Where MindFormers keeps a family's prefix encoder: ChatGLM2WithPtuning2 names it
# `prefix_encoder` (reference/mindformers.md §5.6); the others adopt it without a prefix.
ENCODER_PREFIX = {"glm2": "prefix_encoder."}


def family_of(net) -> Family:
    """Dimensions of a petrun model, read through the hooks every family's model class has
    (dims, word_embedding, extend_positions); a UserError for a model without them."""
    if not all(hasattr(net, h) for h in ("dims", "word_embedding", "extend_positions")):
        raise UserError(f"prompt-learning methods need a petrun Llama2, ChatGLM2 or GPT2 model, "
                        f"not {type(net).__name__}", key=f"{pet_base.KEY_PREFIX}.pet_type",
                        fix="use one of the model.arch.type values petrun builds")
    d = net.dims()
    return Family(d["family"], d["num_layers"], d["kv_heads"], d["head_dim"], d["hidden"],
                  d["vocab"], d["max_positions"], d["seq_length"], net.word_embedding(),
                  ENCODER_PREFIX.get(d["family"], ""))


def extend_positions(net, family: Family, extra: int, key: str) -> None:
    """Let the model number `extra` more positions: virtual tokens come first and take positions
    0..extra-1, as in PEFT (the model class knows how: rotary tables are rebuilt longer, GPT-2's
    learned table must already fit)."""
    net.extend_positions(extra, key)


class PromptLearningModel(nn.Cell):
    """`pet_model` (the base model) run with `encoder(batch)` in the hook named by `hook`.

    construct(input_ids, labels=None) has the base model's meaning: logits for input_ids (the
    virtual tokens produce none) or the loss. `config`, `dtypes` and `num_virtual_tokens` are the
    base model's and the encoder's, for the inference code (KV caches must hold the prefix too).
    """

    def __init__(self, base, encoder, hook: str, pet_type: str):
        super().__init__(auto_prefix=False)
        self.pet_model = base
        self.encoder = encoder
        self.hook = hook
        self.pet_type = pet_type
        self.config = getattr(base, "config", None)
        self.dtypes = getattr(base, "dtypes", None)
        self.num_virtual_tokens = int(encoder.num_tokens)
        # MindFormers' name for the prefix length (GLM2 incremental inference shifts by it).
        self.pre_seq_len = self.num_virtual_tokens if hook == PREFIX_HOOK else 0

    def virtual_inputs(self, batch_size: int):
        """What goes into the hook for a batch (prefix key/values or prompt embeddings)."""
        return self.encoder(batch_size)

    def decode(self, *args, **kwargs):
        """Prompt methods cannot decode incrementally yet (PrefixModel can). Raised at the
        PyNative prefill, before any graph would compile this."""
        raise UserError(f"incremental generation with {self.pet_type} is not built yet: the "
                        "models' decode() takes no prompt embeddings",
                        key=f"{pet_base.KEY_PREFIX}.pet_type",
                        fix="evaluate with logits/loss (construct), or use a prefix method "
                            "(ptuning2, prefixtuning) or LoRA for generation")

    def construct(self, input_ids, labels=None):
        batch = input_ids.shape[0]
        if self.hook == PREFIX_HOOK:
            return self.pet_model(input_ids, labels, self.encoder(batch))
        return self.pet_model(input_ids, labels, None, self.encoder(batch))


class PrefixModel(PromptLearningModel):
    """A prefix method's wrapper, with what petrun.infer needs for incremental decoding."""

    def prefix_key_values(self, batch_size: int):
        """The per-layer prefix (L, 2, B, n_kv_heads, P, head_dim): the first cache slots."""
        return self.encoder(batch_size)

    def decode(self, *args, **kwargs):
        """The base model's incremental decode (petrun.infer passes the prefix as `past`)."""
        return self.pet_model.decode(*args, **kwargs)


# MindFormers' ChatGLM2WithPtuning2 adopts its encoder as `prefix_encoder`, and MindSpore re-names
# an adopted cell's parameters by the first attribute that reaches each one: the MLP's Dense layers
# are reached as dense_in/dense_out before trans.0/trans.2 (Llama's Ptuning2Model adopts with
# auto_prefix=False, so there the SequentialCell path stays). Checked by tests/oracle.
ADOPTED_MLP = {"trans.0.": "dense_in.", "trans.2.": "dense_out."}


def name_encoder(encoder, pet_type: str, prefix: str = "") -> None:
    """`<prefix>mindpet_delta_<pet_type>_<attribute path>` for every encoder parameter."""
    for path, param in encoder.parameters_and_names():
        if prefix:
            for old, new in ADOPTED_MLP.items():
                if path.startswith(old):
                    path = new + path[len(old):]
        param.name = f"{prefix}mindpet_delta_{pet_type}_{path}"


def wrap(net, encoder, hook: str, pet_type: str, pet_config, family: Family):
    """Wrap, name, freeze; the report's `model` is the wrapper to train."""
    include, exclude = pet_base.freeze_globs(pet_config)
    prefix = family.encoder_prefix if hook == PREFIX_HOOK else ""
    name_encoder(encoder, pet_type, prefix)
    cls = PrefixModel if hook == PREFIX_HOOK else PromptLearningModel
    wrapped = cls(net, encoder, hook, pet_type)
    net.pet_wrapped = True   # a second method applied to the bare base is refused
    pet_base.freeze(wrapped, pet_type, include, exclude)
    return pet_base.make_report(wrapped, pet_type)


def dtypes_of(net) -> tuple:
    """(parameter dtype, compute dtype) the encoder uses: the base model's, as resolved for the
    device (bf16 → fp32 on CPU)."""
    dtypes = net.dtypes
    return dtypes["param_init_type"], dtypes["compute_dtype"]


_MISMATCH = re.compile(r"shape mismatch for (\S+): checkpoint \(([\d, ]*)\), model \(([\d, ]*)\)")
_LENGTH_KEY = {"ptuning2": "pre_seq_len", "prefixtuning": "prefix_token_num",
               "prompt_tuning": "num_virtual_tokens", "ptuning": "num_virtual_tokens"}


def explain_shape_mismatch(model, error: UserError) -> UserError:
    """The loader's generic shape error, restated for a prompt table whose length differs: the
    adapter was trained with another pre_seq_len / num_virtual_tokens. Other errors pass."""
    pet_type = getattr(model, "pet_type", None)
    m = _MISMATCH.search(error.message or "")
    if pet_type not in _LENGTH_KEY or not m or not m.group(1).endswith("embedding.embedding_table"):
        return error
    got = [int(x) for x in m.group(2).split(",") if x.strip()]
    want = [int(x) for x in m.group(3).split(",") if x.strip()]
    if len(got) != 2 or len(want) != 2 or got[1] != want[1] or got[0] == want[0]:
        return error
    key = _LENGTH_KEY[pet_type]
    return UserError(f"the checkpoint's {pet_type} table has {got[0]} virtual tokens but "
                     f"pet_config.{key} is {want[0]}", file=error.file,
                     key=f"{pet_base.KEY_PREFIX}.{key}",
                     fix=f"set pet_config.{key}: {got[0]} to load this adapter (a prompt encoder "
                         "is never re-initialised to fit)")
