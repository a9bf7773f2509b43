"""PET method hyper-parameters as plain dataclasses (no MindSpore import).

`model.model_config.pet_config` is validated against the dataclass registered for its `pet_type`
(key names and defaults as MindFormers' pet_config.py, reference/mindformers.md §1.8).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping


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


@dataclass
class Ptuning2Config(PetConfigBase):
    pet_type: str = "ptuning2"
    pre_seq_len: int = 128
    prefix_projection: bool = False
    projection_dim: int = 128
    dropout_prob: float = 0.01

    def check(self):
        errs = []
        if not isinstance(self.pre_seq_len, int) or self.pre_seq_len <= 0:
            errs.append(("pre_seq_len", f"must be a positive integer, got {self.pre_seq_len!r}"))
        if not isinstance(self.projection_dim, int) or self.projection_dim <= 0:
            errs.append(("projection_dim", f"must be a positive integer, got {self.projection_dim!r}"))
        if not isinstance(self.dropout_prob, (int, float)) or not 0 <= self.dropout_prob < 1:
            errs.append(("dropout_prob", f"must be in [0, 1), got {self.dropout_prob!r}"))
        return errs


@dataclass
class PrefixTuningConfig(PetConfigBase):
    pet_type: str = "prefixtuning"
    prefix_token_num: int = 128
    mid_dim: int = 512
    dropout_rate: float = 0.1

    def check(self):
        errs = []
        for k in ("prefix_token_num", "mid_dim"):
            v = getattr(self, k)
            if not isinstance(v, int) or v <= 0:
                errs.append((k, f"must be a positive integer, got {v!r}"))
        if not isinstance(self.dropout_rate, (int, float)) or not 0 <= self.dropout_rate < 1:
            errs.append(("dropout_rate", f"must be in [0, 1), got {self.dropout_rate!r}"))
        return errs


# pet_type -> config class. Methods register here; the CLI reports "not built yet" for ones whose
# layers have not landed (see petrun.pet.METHODS).
PET_CONFIGS: dict[str, type[PetConfigBase]] = {
    "lora": LoraConfig,
    "ptuning2": Ptuning2Config,
    "prefixtuning": PrefixTuningConfig,
}
