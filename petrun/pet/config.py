"""PET method hyper-parameters as plain dataclasses, and the PET-method registry (no MindSpore
import).

`model.model_config.pet_config` is validated against the dataclass registered for its `pet_type`
(key names and defaults as MindFormers' pet_config.py, reference/mindformers.md §1.8).
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping as _Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping


@dataclass
class PetConfigBase:
    pet_type: str = ""
    freeze_include: list = field(default_factory=list)
    freeze_exclude: list = field(default_factory=list)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PetConfigBase":
        names = cls.field_names()
        return cls(**{k: v for k, v in dict(d).items() if k in names})

    def check(self) -> list[tuple[str, str]]:
        """Impossible values as (key, message) pairs; the schema turns them into errors."""
        return []

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class LoraConfig(PetConfigBase):
    pet_type: str = "lora"
    lora_rank: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.01
    target_modules: Any = None
    exclude_layers: Any = None
    # Accepted for MindFormers compatibility; MindFormers does not forward them either (§5.3).
    lora_a_init: str = "normal"
    lora_b_init: str = "zero"
    param_init_type: Any = None
    compute_dtype: Any = None

    @property
    def scaling(self) -> float:
        return float(self.lora_alpha) / float(self.lora_rank)

    def check(self):
        errs = []
        if not isinstance(self.lora_rank, int) or isinstance(self.lora_rank, bool) or self.lora_rank <= 0:
            errs.append(("lora_rank", f"must be a positive integer, got {self.lora_rank!r}"))
        if not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha <= 0:
            errs.append(("lora_alpha", f"must be a positive number, got {self.lora_alpha!r}"))
        if not isinstance(self.lora_dropout, (int, float)) or not 0 <= self.lora_dropout < 1:
            errs.append(("lora_dropout", f"must be in [0, 1), got {self.lora_dropout!r}"))
        if not self.target_modules or not isinstance(self.target_modules, str):
            errs.append(("target_modules", "must be a regex string such as '.*wq|.*wv'"))
        return errs


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _probability(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1


def _regex_string(v) -> bool:
    return isinstance(v, str) and bool(v)


@dataclass
class Ptuning2Config(PetConfigBase):
    """P-Tuning v2: per-layer key/value prefixes from a table (optionally through an MLP)."""
    pet_type: str = "ptuning2"
    pre_seq_len: int = 128
    prefix_projection: bool = False
    projection_dim: int = 128
    dropout_prob: float = 0.01

    def check(self):
        errs = []
        if not _positive_int(self.pre_seq_len):
            errs.append(("pre_seq_len", f"must be a positive integer, got {self.pre_seq_len!r}"))
        if not _positive_int(self.projection_dim):
            errs.append(("projection_dim", f"must be a positive integer, got {self.projection_dim!r}"))
        if not _probability(self.dropout_prob):
            errs.append(("dropout_prob", f"must be in [0, 1), got {self.dropout_prob!r}"))
        return errs


@dataclass
class PrefixTuningConfig(PetConfigBase):
    """Prefix tuning (MindFormers' PrefixTuningModel): P-Tuning v2's encoder, always through a
    tanh MLP of width mid_dim."""
    pet_type: str = "prefixtuning"
    prefix_token_num: int = 128
    mid_dim: int = 512
    dropout_rate: float = 0.1

    def check(self):
        errs = []
        for k in ("prefix_token_num", "mid_dim"):
            v = getattr(self, k)
            if not _positive_int(v):
                errs.append((k, f"must be a positive integer, got {v!r}"))
        if not _probability(self.dropout_rate):
            errs.append(("dropout_rate", f"must be in [0, 1), got {self.dropout_rate!r}"))
        return errs


PROMPT_INITS = ("RANDOM", "TEXT", "SAMPLE_VOCAB")


@dataclass
class PromptTuningConfig(PetConfigBase):
    """Prompt tuning: num_virtual_tokens trainable input embeddings in front of every sequence.

    Key names are PEFT's PromptTuningConfig's (MindFormers has no prompt tuning).
    prompt_tuning_init: RANDOM (normal, with the std of the word-embedding table), SAMPLE_VOCAB
    (rows of random vocabulary tokens) or TEXT (the embeddings of prompt_tuning_init_text as
    tokenized by the SentencePiece model tokenizer_name_or_path, repeated or cut to length).
    The vocabulary-based inits read the base embeddings after the base checkpoint is loaded.
    """
    pet_type: str = "prompt_tuning"
    num_virtual_tokens: int = 20
    prompt_tuning_init: str = "RANDOM"
    prompt_tuning_init_text: Any = None
    tokenizer_name_or_path: Any = None

    def check(self):
        errs = []
        if not _positive_int(self.num_virtual_tokens):
            errs.append(("num_virtual_tokens",
                         f"must be a positive integer, got {self.num_virtual_tokens!r}"))
        if self.prompt_tuning_init not in PROMPT_INITS:
            errs.append(("prompt_tuning_init", f"must be one of {', '.join(PROMPT_INITS)}, got "
                                               f"{self.prompt_tuning_init!r}"))
        elif self.prompt_tuning_init == "TEXT":
            if not isinstance(self.prompt_tuning_init_text, str) or not self.prompt_tuning_init_text:
                errs.append(("prompt_tuning_init_text",
                             "prompt_tuning_init TEXT needs the text to start from, e.g. "
                             "'Classify if the tweet is a complaint or not:'"))
            if not isinstance(self.tokenizer_name_or_path, str) or not self.tokenizer_name_or_path:
                errs.append(("tokenizer_name_or_path",
                             "prompt_tuning_init TEXT needs the SentencePiece tokenizer.model "
                             "that tokenizes prompt_tuning_init_text"))
        return errs


PTUNING_ENCODERS = ("MLP", "LSTM")


@dataclass
class PtuningConfig(PetConfigBase):
    """P-tuning (v1): virtual-token embeddings re-parameterised by an MLP or a bi-LSTM + MLP.

    Key names are PEFT's PromptEncoderConfig's. encoder_num_layers counts LSTM layers (the MLP
    always has three linear layers); encoder_dropout is the dropout between LSTM layers.
    """
    pet_type: str = "ptuning"
    num_virtual_tokens: int = 20
    encoder_reparameterization_type: str = "MLP"
    encoder_hidden_size: int = 128
    encoder_num_layers: int = 2
    encoder_dropout: float = 0.0

    def check(self):
        errs = []
        for k in ("num_virtual_tokens", "encoder_hidden_size", "encoder_num_layers"):
            v = getattr(self, k)
            if not _positive_int(v):
                errs.append((k, f"must be a positive integer, got {v!r}"))
        if self.encoder_reparameterization_type not in PTUNING_ENCODERS:
            errs.append(("encoder_reparameterization_type",
                         f"must be MLP or LSTM, got {self.encoder_reparameterization_type!r}"))
        if not _probability(self.encoder_dropout):
            errs.append(("encoder_dropout", f"must be in [0, 1), got {self.encoder_dropout!r}"))
        return errs


@dataclass
class IA3Config(PetConfigBase):
    """IA3: a learned vector scales the output of each target layer, or its input for the
    feed-forward ones. Patterns are re.match-ed on local layer names, like LoRA's target_modules;
    every layer feedforward_modules matches must also be a target."""
    pet_type: str = "ia3"
    target_modules: Any = None
    feedforward_modules: Any = None
    exclude_layers: Any = None
    init_ia3_weights: bool = True

    def check(self):
        errs = []
        if not _regex_string(self.target_modules):
            errs.append(("target_modules", "must be a regex string such as '.*wk|.*wv|.*w2'"))
        if self.feedforward_modules is not None and not _regex_string(self.feedforward_modules):
            errs.append(("feedforward_modules", "must be a regex string such as '.*w2' (or "
                                                "left out: no feed-forward layer)"))
        return errs


ADAPTER_ACTIVATIONS = ("relu", "gelu", "silu", "tanh")


@dataclass
class AdapterConfig(PetConfigBase):
    """Bottleneck (Houlsby) adapters: y = h + up(act(down(h))) on the output h of each target
    layer (the attention output and FFN output projections). `up` starts at zero, so the model
    is unchanged until it trains."""
    pet_type: str = "adapter"
    target_modules: Any = None
    exclude_layers: Any = None
    bottleneck_size: int = 64
    non_linearity: str = "gelu"
    adapter_dropout: float = 0.0

    def check(self):
        errs = []
        if not _regex_string(self.target_modules):
            errs.append(("target_modules", "must be a regex string naming the output projections, "
                                           "e.g. '.*wo|.*w2'"))
        if not _positive_int(self.bottleneck_size):
            errs.append(("bottleneck_size",
                         f"must be a positive integer, got {self.bottleneck_size!r}"))
        if self.non_linearity not in ADAPTER_ACTIVATIONS:
            errs.append(("non_linearity", f"must be one of {', '.join(ADAPTER_ACTIVATIONS)}, "
                                          f"got {self.non_linearity!r}"))
        if not _probability(self.adapter_dropout):
            errs.append(("adapter_dropout", f"must be in [0, 1), got {self.adapter_dropout!r}"))
        return errs


# =============================================================================================
# The PET-method registry: each method is described once, in one `register_method` call.
#
# An entry says everything the rest of petrun asks about a method: its config class (above:
# validation, defaults, `petrun config show`), how to apply it, whether and how it merges, its PEFT
# type, whether packed rows may carry it, the planner's shape function (parameters without
# building) and the names its parameters carry. Config validation, the recipe, checkpoint
# diagnostics, the planner and the pre-flight read these entries, so a new method is one module plus
# one registration (ARCHITECTURE.md, "Adding a PET method"; tests/pet/test_toy_method.py does it).
# Callables are "module:function" strings imported on first use: reading the registry
# (validation, `petrun --help`) never imports MindSpore. It lives beside the config classes so
# that config validation, which reads PET_CONFIGS, sees every registered method.

@dataclass(frozen=True)
class PetMethod:
    pet_type: str
    config: type[PetConfigBase]
    apply: str                    # "module:function": apply(net, config) -> PetReport
    shapes: str | None = None     # "module:function": the planner's (specs, cfg, dims, arch, target)
    merge: str | None = None      # "module:function": merge(net) -> layers merged, in place
    unmerge: str | None = None
    # "module:function": the streaming merge rule petrun ckpt merge applies to a checkpoint file,
    # merge_tensors(model built without weights, config, adapter arrays) -> {base tensor name:
    # fp32 array -> merged fp32 array}. A mergeable method needs one.
    merge_tensors: str | None = None
    # Hugging Face PEFT's name for it, if PEFT has it: what export writes as `peft_type`.
    peft_type: str | None = None
    # PEFT types whose adapters import as this method (ckpt/peft_format.py); a PEFT encoder
    # output cannot be rebuilt into an encoder, so P_TUNING imports as prompt tuning.
    peft_imports: tuple[str, ...] = ()
    title: str = ""               # how messages name it ("LoRA")
    # Packed rows hold several samples; virtual tokens or a key/value prefix belong to one.
    packing: bool = True
    # Words after "mindpet_delta_" in its parameter names (checkpoint diagnostics).
    tags: tuple[str, ...] = ()

    @property
    def mergeable(self) -> bool:
        return self.merge is not None


_METHODS: dict[str, PetMethod] = {}


def register_method(method: PetMethod) -> PetMethod:
    """Add (or replace, for tests) a method; returns it."""
    _METHODS[method.pet_type] = method
    return method


def unregister_method(pet_type: str) -> None:
    _METHODS.pop(pet_type, None)


def method(pet_type: str | None) -> PetMethod | None:
    return _METHODS.get(pet_type)  # type: ignore[arg-type]


def methods() -> list[PetMethod]:
    return list(_METHODS.values())


def resolve(path: str) -> Callable:
    module, func = path.split(":")
    return getattr(importlib.import_module(module), func)


class RegistryView(_Mapping):
    """A read-only {pet_type: field} view that follows later registrations."""

    def __init__(self, field: Callable[[PetMethod], object], only=lambda m: True):
        self._field, self._only = field, only

    def _items(self) -> dict:
        return {k: self._field(m) for k, m in _METHODS.items() if self._only(m)}

    def __getitem__(self, key):
        return self._items()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __repr__(self) -> str:
        return repr(self._items())


# The views the rest of petrun reads (names kept from when each was a table of its own).
PET_CONFIGS: Mapping[str, type[PetConfigBase]] = RegistryView(lambda m: m.config)
METHODS: Mapping[str, str] = RegistryView(lambda m: m.apply)


def _m(name: str) -> str:
    return f"petrun.pet.{name}"


register_method(PetMethod("lora", LoraConfig, f"{_m('lora')}:apply", "petrun.plan.pet:_lora",
                          merge=f"{_m('lora')}:merge", unmerge=f"{_m('lora')}:unmerge",
                          merge_tensors=f"{_m('lora')}:merge_tensors", peft_type="LORA",
                          peft_imports=("LORA",), title="LoRA", tags=("lora",)))
register_method(PetMethod("ptuning2", Ptuning2Config, f"{_m('ptuning2')}:apply",
                          "petrun.plan.pet:_ptuning2", peft_type="PREFIX_TUNING",
                          peft_imports=("PREFIX_TUNING",), title="P-Tuning v2", packing=False,
                          tags=("ptuning2",)))
register_method(PetMethod("prefixtuning", PrefixTuningConfig, f"{_m('prefix')}:apply",
                          "petrun.plan.pet:_prefixtuning", peft_type="PREFIX_TUNING",
                          title="prefix tuning", packing=False, tags=("prefixtuning", "prefix")))
register_method(PetMethod("prompt_tuning", PromptTuningConfig, f"{_m('prompt')}:apply",
                          "petrun.plan.pet:_prompt_tuning", peft_type="PROMPT_TUNING",
                          peft_imports=("PROMPT_TUNING", "P_TUNING"), title="prompt tuning",
                          packing=False, tags=("prompt",)))
register_method(PetMethod("ptuning", PtuningConfig, f"{_m('ptuning')}:apply",
                          "petrun.plan.pet:_ptuning", peft_type="P_TUNING", title="P-Tuning",
                          packing=False, tags=("ptuning",)))
register_method(PetMethod("ia3", IA3Config, f"{_m('ia3')}:apply", "petrun.plan.pet:_ia3",
                          merge=f"{_m('ia3')}:merge", unmerge=f"{_m('ia3')}:unmerge",
                          merge_tensors=f"{_m('ia3')}:merge_tensors", peft_type="IA3",
                          peft_imports=("IA3",), title="IA3", tags=("ia3",)))
register_method(PetMethod("adapter", AdapterConfig, f"{_m('adapter')}:apply",
                          "petrun.plan.pet:_adapter", title="adapters", tags=("adapter",)))
