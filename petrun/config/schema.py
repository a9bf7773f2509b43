"""A typed, strict schema of the MindFormers YAML sections petrun reads.

Each section lists the keys petrun uses and the keys MindFormers configs carry that petrun accepts
but ignores (profiling, AICC upload, autotune, ...). Any other key is an error with the closest
valid key; wrong types and impossible values are errors too. All problems in a file are reported
together so a user fixes them in one pass.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from petrun.config import mindformers_keys as mf
from petrun.data.formats import COLUMN_NAMES
from petrun.errors import UserError
from petrun.models.configs import DTYPES, MODEL_CONFIGS
from petrun.pet.config import PET_CONFIGS

Check = Callable[[Any], "str | None"]


# ---------------------------------------------------------------- value specs
@dataclass
class T:
    """A leaf: allowed python types, optional None, and an optional value check."""
    types: tuple
    none: bool = False
    check: Check | None = None

    def describe(self) -> str:
        names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                 list: "a list", dict: "a mapping"}
        out = " or ".join(names.get(t, t.__name__) for t in self.types)
        return out + (" or null" if self.none else "")


class _Any:
    pass


ANY = _Any()


@dataclass
class Section:
    fields: dict[str, Any]
    ignored: frozenset = frozenset()
    # Cross-field checks: fn(mapping) -> list of (key, message).
    checks: tuple = ()
    # MindFormers keys that would change results if ignored: refused with a reason when set to
    # a value that does something, otherwise accepted and listed as ignored (mindformers_keys).
    refused: dict = field(default_factory=dict)


@dataclass
class ListOf:
    item: Any


@dataclass
class ByType:
    """A mapping whose schema depends on the value of its `type`-like key."""
    key: str
    variants: Callable[[], dict[str, Section]]
    what: str
    # MindFormers classes petrun does not build: value -> why, so the error quotes the value and
    # says what is supported instead of calling a real class "unknown".
    unsupported: dict = field(default_factory=dict)
    # Old spellings of a variant (MindFormers' CheckpointMointor until r1.1.0).
    aliases: dict = field(default_factory=dict)


# ---------------------------------------------------------------- helpers
def _positive(v):
    return None if v > 0 else f"must be positive, got {v}"


def _non_negative(v):
    return None if v >= 0 else f"must be >= 0, got {v}"


def _unit(v):
    return None if 0 <= v <= 1 else f"must be between 0 and 1, got {v}"


def _one_of(*choices, casefold=False):
    def check(v):
        vals = [c.lower() for c in choices] if casefold else list(choices)
        probe = v.lower() if casefold and isinstance(v, str) else v
        if probe in vals:
            return None
        return f"must be one of {', '.join(map(str, choices))}; got {v!r}"
    return check


def _memory(v):
    return None if re.fullmatch(r"\d+(\.\d+)?\s*[GgMmKkTt][Bb]", str(v)) else \
        f"must look like '59GB', got {v!r}"


BOOL = T((bool,))
BOOL_OR_NONE = T((bool,), none=True)
INT = T((int,))
POS_INT = T((int,), check=_positive)
NONNEG_INT = T((int,), check=_non_negative)
NUM = T((int, float))
NONNEG_NUM = T((int, float), check=_non_negative)
UNIT = T((int, float), check=_unit)
STR = T((str,))
STR_OR_NONE = T((str,), none=True)
LIST = T((list,))
DICT = T((dict,))
DTYPE = T((str,), check=_one_of(*DTYPES))
DTYPE_OR_NONE = T((str,), none=True, check=_one_of(*DTYPES))


def _dataclass_section(cls, overrides: dict[str, Any], ignored=frozenset(), checks=()) -> Section:
    """Derive a section from a config dataclass: the type of each default picks the spec."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            fields[f.name] = overrides[f.name]
            continue
        hint = hints.get(f.name)
        if hint is bool:
            fields[f.name] = BOOL
        elif hint is int:
            fields[f.name] = INT
        elif hint is float:
            fields[f.name] = NUM
        elif hint is str:
            fields[f.name] = STR
        elif hint is list:
            fields[f.name] = LIST
        else:
            fields[f.name] = ANY
    return Section(fields, frozenset(ignored), tuple(checks))


# ---------------------------------------------------------------- model / pet
def _pet_checks(cls):
    def run(m: Mapping) -> list[tuple[str, str]]:
        try:
            cfg = cls.from_dict(m)
        except TypeError:
            return []
        return cfg.check()
    return run


def pet_sections() -> dict[str, Section]:
    out = {}
    for name, cls in PET_CONFIGS.items():
        out[name] = _dataclass_section(
            cls, {"pet_type": STR, "freeze_include": LIST, "freeze_exclude": LIST,
                  "exclude_layers": T((list, str), none=True),
                  "param_init_type": DTYPE_OR_NONE, "compute_dtype": DTYPE_OR_NONE},
            checks=[_pet_checks(cls)])
    return out


PET_CONFIG = ByType("pet_type", pet_sections, "pet_type", mf.UNSUPPORTED_PET_TYPES)


def _llama_checks(m: Mapping) -> list[tuple[str, str]]:
    errs = []
    h, n, kv = m.get("hidden_size"), m.get("num_heads"), m.get("n_kv_heads")
    if isinstance(h, int) and isinstance(n, int) and n > 0 and h % n:
        errs.append(("num_heads", f"hidden_size {h} is not divisible by num_heads {n}"))
    if isinstance(n, int) and isinstance(kv, int) and kv > 0 and n % kv:
        errs.append(("n_kv_heads", f"num_heads {n} is not divisible by n_kv_heads {kv}"))
    return errs


_MODEL_COMMON = {
    "type": STR, "batch_size": POS_INT, "pet_config": PET_CONFIG, "top_k": NONNEG_INT,
    "top_p": UNIT, "repetition_penalty": NUM, "max_decode_length": POS_INT,
    "checkpoint_name_or_path": T((str,), none=True),
    "compute_dtype": DTYPE, "param_init_type": DTYPE, "layernorm_compute_type": DTYPE,
    "softmax_compute_type": DTYPE, "rotary_dtype": DTYPE, "residual_dtype": DTYPE_OR_NONE,
    "embedding_init_type": DTYPE_OR_NONE,
    # GenerationConfig's total-length bound (r1.0+); it overrides max_decode_length there, and
    # petrun's config maps it the same way (ModelConfigBase.normalize).
    "max_length": T((int,), none=True, check=_positive),
}
_MODEL_SPECIFIC = {
    "LlamaConfig": ({"seq_length": POS_INT, "hidden_size": POS_INT, "num_layers": POS_INT,
                     "num_heads": POS_INT, "vocab_size": POS_INT, "multiple_of": POS_INT,
                     "n_kv_heads": T((int,), none=True, check=_positive),
                     "intermediate_size": T((int,), none=True, check=_positive),
                     "max_position_embedding": T((int,), none=True, check=_positive),
                     "ffn_dim_multiplier": T((int, float), none=True, check=_positive),
                     "rms_norm_eps": T((int, float, str)), "theta": NUM,
                     "extend_method": T((str,), check=_one_of("None", "PI", "NTK")),
                     "scaling_factor": NUM},
                    [_llama_checks]),
}


def _glm2_checks(m: Mapping) -> list[tuple[str, str]]:
    errs = []
    n, g = m.get("num_attention_heads"), m.get("multi_query_group_num")
    if isinstance(n, int) and isinstance(g, int) and g > 0 and n % g:
        errs.append(("multi_query_group_num",
                     f"num_attention_heads {n} is not divisible by multi_query_group_num {g}"))
    kv = m.get("kv_channels")
    if isinstance(kv, int) and kv % 4:
        errs.append(("kv_channels", f"must be a multiple of 4 (rotary pairs on half of each "
                                    f"head), got {kv}"))
    return errs


def _gpt2_checks(m: Mapping) -> list[tuple[str, str]]:
    h, n = m.get("hidden_size"), m.get("num_heads")
    if isinstance(h, int) and isinstance(n, int) and n > 0 and h % n:
        return [("num_heads", f"hidden_size {h} is not divisible by num_heads {n}")]
    return []


_DROPOUT = T((int, float), check=lambda v: None if 0 <= v < 1 else f"must be in [0, 1), got {v}")
_MODEL_SPECIFIC.update({
    "ChatGLM2Config": ({"seq_length": POS_INT, "hidden_size": POS_INT, "num_layers": POS_INT,
                        "num_attention_heads": POS_INT, "padded_vocab_size": POS_INT,
                        "vocab_size": T((int,), none=True, check=_positive),
                        "ffn_hidden_size": POS_INT, "kv_channels": POS_INT,
                        "multi_query_group_num": POS_INT, "layernorm_epsilon": T((int, float, str)),
                        "rope_ratio": T((int, float, str)), "hidden_dropout": _DROPOUT,
                        "attention_dropout": _DROPOUT, "quantization_bit": NONNEG_INT,
                        "pre_seq_len": T((int, str), none=True),
                        "softmax_compute_type": DTYPE_OR_NONE, "rotary_dtype": DTYPE_OR_NONE,
                        "residual_dtype": DTYPE_OR_NONE,
                        "eos_token_id": INT, "pad_token_id": INT,
                        "gmask_token_id": T((int,), none=True),
                        "bos_token_id": T((int,), none=True)},
                       [_glm2_checks]),
    "GPT2Config": ({"seq_length": POS_INT, "hidden_size": POS_INT, "num_layers": POS_INT,
                    "num_heads": POS_INT, "vocab_size": POS_INT, "expand_ratio": POS_INT,
                    "max_position_embeddings": T((int,), none=True, check=_positive),
                    "embedding_dropout_prob": _DROPOUT, "hidden_dropout_rate": _DROPOUT,
                    "attention_dropout_rate": _DROPOUT,
                    "hidden_act": T((str,), check=_one_of("gelu", "fast_gelu")),
                    "eos_token_id": INT, "pad_token_id": INT, "bos_token_id": INT,
                    "unk_token_id": INT, "num_labels": POS_INT},
                   [_gpt2_checks]),
})

# Keys seen in shipped MindFormers model_configs that only drive Ascend kernels or features petrun
# does not implement; accepted so real configs load. The r1.0–r1.3 keys, with the release and
# source that define each, are in mindformers_keys.MODEL_CONFIG_IGNORED / _REFUSED.
_MODEL_IGNORED = frozenset({
    "use_rope_slice", "parallel_optimizer", "qkv_concat", "fused_rms_norm", "pp_interleave_num",
    "use_ring_attention", "mask_generate", "enable_high_performance", "quantization_bit",
    "llm_backend", "rotary_emb_base", "input_sliced_sig", "use_past_shard",
})


def model_config_sections() -> dict[str, Section]:
    out = {}
    for name, cls in MODEL_CONFIGS.items():
        specific, checks = _MODEL_SPECIFIC.get(name, ({}, []))
        sec = _dataclass_section(cls, {**_MODEL_COMMON, **specific}, checks=checks)
        # Ignored keys must not shadow real fields.
        sec.ignored = frozenset((_MODEL_IGNORED | set(mf.MODEL_CONFIG_IGNORED)) - set(sec.fields))
        sec.refused = {k: r for k, r in mf.MODEL_CONFIG_REFUSED.items() if k not in sec.fields}
        out[name] = sec
    return out


def _arch_types() -> list[str]:
    from petrun.models.registry import known_archs  # no MindSpore import
    return known_archs()


def _unsupported(what: str, value: str, why: str, supported) -> str:
    """The message for a real MindFormers class petrun does not build: quoted, with the reason."""
    return (f"{what} {value!r} is not supported by petrun: {why}. petrun supports: "
            f"{', '.join(supported)}")


def _known_arch(v: str) -> str | None:
    known = _arch_types()
    if v in known:
        return None
    if v in mf.UNSUPPORTED_ARCHS:
        return _unsupported("model arch", v, mf.UNSUPPORTED_ARCHS[v], known)
    close = difflib.get_close_matches(v, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown model arch {v!r}{hint}; petrun supports: {', '.join(known)}"


def _data_loader_type(v: str) -> str | None:
    known = ("MindDataset", "ADGenDataLoader", "JsonDataset")
    if v in known:
        return None
    if v in mf.UNSUPPORTED_DATA_LOADERS:
        return _unsupported("data_loader type", v, mf.UNSUPPORTED_DATA_LOADERS[v], known)
    return f"must be one of {', '.join(known)}; got {v!r}"


MODEL = Section({
    "model_config": ByType("type", model_config_sections, "model_config type",
                           mf.UNSUPPORTED_MODEL_CONFIGS),
    "arch": Section({"type": T((str,), check=_known_arch)}),
})

# ---------------------------------------------------------------- run sections
SCALE_SENSE = T((int, float, dict))
RUNNER_WRAPPER = Section({
    "type": T((str,), check=_one_of("MFTrainOneStepCell", "TrainOneStepCell",
                                    "TrainOneStepWithLossScaleCell", "MFPipelineWithLossScaleCell")),
    "scale_sense": ANY, "use_clip_grad": BOOL, "max_grad_norm": T((int, float), check=_positive),
}, ignored=frozenset({"local_norm", "calculate_per_token_loss", "use_skip_data_by_global_norm",
                     *mf.RUNNER_WRAPPER_IGNORED}))

RUNNER_CONFIG = Section({
    "epochs": POS_INT, "batch_size": POS_INT, "sink_mode": BOOL, "sink_size": INT,
    "gradient_accumulation_steps": POS_INT,
    # petrun: stop after this many optimizer steps (0 = run all epochs), as MindFormers' stop_step.
    "stop_step": NONNEG_INT,
}, ignored=frozenset({"num_classes", "initial_epoch", "per_epoch_size", "has_trained_epoches",
                      "has_trained_steps", "image_size", "step_scale"}))

OPTIMIZER = Section({
    "type": T((str,), check=_one_of("AdamWeightDecay", "FP32StateAdamWeightDecay",
                                    "FusedAdamWeightDecay", "AdamW", "adamw")),
    "beta1": UNIT, "beta2": UNIT, "eps": T((int, float), check=_positive),
    "learning_rate": NONNEG_NUM, "weight_decay": NONNEG_NUM,
}, ignored=frozenset({"swap", "use_fused"}))

LR_TYPES = ("CosineWithWarmUpLR", "cosine", "constant", "ConstantWarmUpLR", "linear",
            "LinearWithWarmUpLR", "polynomial", "PolynomialWithWarmUpLR")
LR_SCHEDULE = Section({
    "type": T((str,), check=_one_of(*LR_TYPES)),
    "learning_rate": NONNEG_NUM, "lr_end": NONNEG_NUM, "warmup_ratio": T((int, float), none=True, check=_unit),
    "warmup_steps": T((int,), none=True, check=_non_negative), "warmup_epochs": T((int,), none=True),
    "total_steps": T((int,), none=True), "warmup_lr_init": NONNEG_NUM, "num_cycles": NUM,
    "decay_steps": T((int,), none=True), "power": NUM,
})

DATA_LOADER = Section({
    "type": T((str,), check=_data_loader_type),
    "dataset_dir": STR_OR_NONE, "dataset_files": T((list,), none=True), "shuffle": BOOL,
    "num_samples": T((int,), none=True), "phase": STR, "version": INT, "origin_columns": LIST,
})
DATASET = Section({
    "data_loader": DATA_LOADER, "input_columns": LIST, "output_columns": LIST,
    "batch_size": POS_INT, "drop_remainder": BOOL, "repeat": POS_INT, "seed": INT,
    "num_parallel_workers": POS_INT, "python_multiprocessing": BOOL,
    "tokenizer": DICT, "max_source_length": POS_INT, "max_target_length": POS_INT,
    "ignore_pad_token_for_loss": BOOL,
    # petrun-only: pack short samples (block-diagonal attention), or batch samples of similar
    # length and trim each batch's padding (bucket widths are multiples of bucket_multiple).
    "packing": BOOL, "bucketing": BOOL, "bucket_multiple": POS_INT,
    # petrun-only, raw chat/instruction records: the file's names for petrun's column names
    # (petrun/data/formats.py), and the split of a Hugging Face DatasetDict folder.
    "columns": Section({name: STR for name in COLUMN_NAMES}), "split": STR,
}, ignored=frozenset({"numa_enable", "prefetch_size", "column_order", "tokenizer_path",
                     "eos_reset", "text_transforms", *mf.DATASET_IGNORED}),
   refused=mf.DATASET_REFUSED)
DATASET_TASK = Section({"type": STR, "dataset_config": ANY})

PARALLEL_MODES = (0, 1, 2, 3, "DATA_PARALLEL", "SEMI_AUTO_PARALLEL", "AUTO_PARALLEL",
                  "HYBRID_PARALLEL", "STAND_ALONE", "data_parallel", "semi_auto_parallel",
                  "auto_parallel", "hybrid_parallel", "stand_alone")
PARALLEL = Section({
    "parallel_mode": T((int, str), check=_one_of(*PARALLEL_MODES)),
    "gradients_mean": BOOL, "enable_alltoall": BOOL, "full_batch": BOOL, "search_mode": STR,
    "enable_parallel_optimizer": BOOL, "loss_repeated_mean": BOOL,
    "parallel_optimizer_config": Section({
        "gradient_accumulation_shard": BOOL, "parallel_optimizer_threshold": NONNEG_INT,
        "optimizer_weight_shard_size": INT}),
    "strategy_ckpt_save_file": STR, "strategy_ckpt_load_file": STR,
    "strategy_ckpt_config": Section({"save_file": STR, "load_file": STR,
                                     "only_trainable_params": BOOL}),
    "pipeline_config": DICT, "dataset_strategy": ANY, "auto_pipeline": BOOL, "device_num": INT,
}, ignored=frozenset({"comm_fusion", "enable_alltoall_fusion", *mf.PARALLEL_IGNORED}))

PARALLEL_CONFIG = Section({
    "data_parallel": POS_INT, "model_parallel": POS_INT, "pipeline_stage": POS_INT,
    "context_parallel": POS_INT, "expert_parallel": POS_INT, "use_seq_parallel": BOOL,
    "micro_batch_num": POS_INT, "vocab_emb_dp": BOOL, "gradient_aggregation_group": POS_INT,
    "optimizer_shard": BOOL, "seq_split_num": POS_INT, "context_parallel_algo": STR,
    "ulysses_degree_in_cp": POS_INT, "mem_coeff": NUM,
}, ignored=frozenset(mf.PARALLEL_CONFIG_IGNORED))

RECOMPUTE_CONFIG = Section({
    "recompute": T((bool, list)), "select_recompute": T((bool, list, dict)),
    "parallel_optimizer_comm_recompute": BOOL, "mp_comm_recompute": BOOL,
    "recompute_slice_activation": BOOL, "select_comm_recompute": T((bool, list, dict)),
    "select_recompute_exclude": T((bool, list, dict)), "select_comm_recompute_exclude": T((bool, list, dict)),
})

CONTEXT = Section({
    "mode": T((int,), check=_one_of(0, 1)),
    "device_target": T((str,), check=_one_of("Ascend", "CPU", "GPU")),
    "device_id": NONNEG_INT, "max_call_depth": POS_INT,
    "max_device_memory": T((str,), check=_memory), "save_graphs": T((bool, int)),
    "save_graphs_path": STR, "jit_config": DICT, "runtime_num_threads": POS_INT,
}, ignored=frozenset({"ascend_config", "enable_graph_kernel", "graph_kernel_flags",
                     "memory_optimize_level", "affinity_cpu_list", "deterministic",
                     "mempool_block_size", "precompile_only", "enable_compile_cache",
                     "compile_cache_path", "device_id_list", *mf.CONTEXT_IGNORED}))

CALLBACK_SECTIONS = lambda: {  # noqa: E731 - lazily built like the other ByType variants
    "MFLossMonitor": Section({"type": STR, "per_print_times": POS_INT},
                             ignored=frozenset({"learning_rate", "micro_batch_num",
                                                "micro_batch_interleave_num", "origin_epochs",
                                                "dataset_size", "initial_epoch", "initial_step",
                                                "global_batch_size", "gradient_accumulation_steps",
                                                "check_for_nan_in_loss_and_grad",
                                                *mf.LOSS_MONITOR_IGNORED})),
    "CheckpointMonitor": Section({
        "type": STR, "prefix": STR, "directory": STR_OR_NONE, "save_checkpoint_steps": POS_INT,
        "save_checkpoint_seconds": NONNEG_INT, "keep_checkpoint_max": POS_INT,
        "keep_checkpoint_per_n_minutes": NONNEG_INT, "integrated_save": BOOL, "async_save": BOOL,
        "save_network_params": BOOL, "save_trainable_params": BOOL,
        "checkpoint_format": T((str,), check=_one_of("ckpt", "safetensors")),
        "remove_redundancy": BOOL, "exception_save": BOOL},
        ignored=frozenset(mf.CHECKPOINT_MONITOR_IGNORED), refused=mf.CHECKPOINT_MONITOR_REFUSED),
    # Accepted for compatibility, not run by petrun.
    "ObsMonitor": Section({"type": STR}, ignored=frozenset({"keep_last",
                                                          *mf.OBS_MONITOR_IGNORED})),
    "SummaryMonitor": Section({"type": STR}, ignored=frozenset({"summary_dir", "collect_freq",
                                                              *mf.SUMMARY_MONITOR_IGNORED})),
    "ProfileMonitor": Section({"type": STR}, ignored=frozenset({"start_step", "stop_step",
                                                              *mf.PROFILE_MONITOR_IGNORED})),
}
CALLBACK = ByType("type", CALLBACK_SECTIONS, "callback type", aliases=mf.CALLBACK_ALIASES)
IGNORED_CALLBACK_TYPES = {"ObsMonitor", "SummaryMonitor", "ProfileMonitor"}

PROCESSOR = Section({
    "type": STR, "return_tensors": STR, "max_length": POS_INT,
    "tokenizer": Section({
        "type": STR, "vocab_file": STR_OR_NONE, "tokenizer_file": STR_OR_NONE,
        "merges_file": STR_OR_NONE, "unk_token": STR, "bos_token": STR, "eos_token": STR,
        "pad_token": STR, "end_token": STR, "mask_token": STR, "gmask_token": STR,
        "add_bos_token": BOOL, "add_eos_token": BOOL, "chat_template": STR_OR_NONE,
    }, ignored=frozenset({"padding_side", "legacy", "add_prefix_space", *mf.TOKENIZER_IGNORED}),
        refused=mf.TOKENIZER_REFUSED),
}, ignored=frozenset({"image_processor", "audio_processor"}))

RUN_MODES = ("train", "finetune", "eval", "predict")
ROOT = Section({
    "seed": INT, "output_dir": STR, "run_mode": T((str,), check=_one_of(*RUN_MODES)),
    "load_checkpoint": STR_OR_NONE, "src_strategy_path_or_dir": STR_OR_NONE,
    "auto_trans_ckpt": BOOL, "only_save_strategy": BOOL, "resume_training": T((bool, str)),
    # petrun-only (Hugging Face TrainingArguments' name): a new run may replace another run's
    # checkpoints and metrics in output_dir; without it (or --resume) that is refused.
    "overwrite_output_dir": BOOL,
    "use_parallel": BOOL, "do_eval": BOOL, "eval_step_interval": INT, "eval_epoch_interval": INT,
    "micro_batch_interleave_num": POS_INT, "transform_process_num": POS_INT,
    "transform_by_rank": BOOL, "npu_num_per_node": POS_INT,
    "load_ckpt_format": T((str,), check=_one_of("ckpt", "safetensors")),
    "trainer": Section({"type": STR, "model_name": STR}),
    "runner_config": RUNNER_CONFIG, "runner_wrapper": RUNNER_WRAPPER,
    "optimizer": OPTIMIZER, "lr_schedule": LR_SCHEDULE,
    "train_dataset": DATASET, "eval_dataset": DATASET,
    "train_dataset_task": DATASET_TASK, "eval_dataset_task": DATASET_TASK,
    "parallel": PARALLEL, "parallel_config": PARALLEL_CONFIG, "recompute_config": RECOMPUTE_CONFIG,
    "context": CONTEXT, "callbacks": ListOf(CALLBACK), "model": MODEL, "processor": PROCESSOR,
    "metric": ANY,
    # MindFormers (1.5+) `tensorboard:` section, written with tensorboardX as MindFormers does.
    "tensorboard": Section({
        "tensorboard_dir": STR_OR_NONE, "tensorboard_queue_size": POS_INT,
        "log_loss_scale_to_tensorboard": BOOL, "log_timers_to_tensorboard": BOOL}),
}, ignored=frozenset({
    "profile", "profile_start_step", "profile_stop_step", "init_start_profile",
    "profile_communication", "profile_memory", "auto_tune", "filepath_prefix", "autotune_per_step",
    "layer_scale", "layer_decay", "lr_scale", "lr_scale_factor", "remote_save_url",
    "eval_callbacks", "swap_config", "monitor_config", "load_ckpt_async",
    "remove_redundancy", "use_legacy", "pretrained_model_dir", "generation", "register_path",
    "ignore_data_skip", "data_skip_steps", "print_separate_loss", "adapter_id", "context_parallel",
    *mf.ROOT_IGNORED,
}), refused=mf.ROOT_REFUSED)


# ---------------------------------------------------------------- validation
@dataclass
class Problem:
    key: str
    message: str
    origin: str | None = None
    suggestion: str | None = None

    def render(self) -> str:
        where = f"{self.origin}: " if self.origin else ""
        text = f"{where}{self.key}: {self.message}"
        if self.suggestion:
            text += f" (did you mean '{self.suggestion}'?)"
        return text


class ConfigError(UserError):
    key_in_message = False

    def __init__(self, problems: list[Problem], file: str | None):
        self.problems = problems
        lines = [p.render() for p in problems]
        head = "invalid config" if len(lines) == 1 else f"invalid config ({len(lines)} problems)"
        super().__init__(head + ":\n  " + "\n  ".join(lines), file=file,
                         key=problems[0].key if problems else None,
                         fix="correct the keys above in the named file (or the command-line override)")


@dataclass
class Validation:
    problems: list[Problem] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    run_mode: str | None = None


def _origin(origins: Mapping[str, str], key: str) -> str | None:
    probe = key
    while probe:
        if probe in origins:
            return origins[probe]
        probe = probe.rpartition(".")[0]
    # a mapping whose own line we know from a child
    for k, v in origins.items():
        if k.startswith(key + "."):
            return v
    return None


def _type_ok(spec: T, value: Any) -> bool:
    # MindFormers writes null as the string "None" (PyYAML 1.1 keeps it a string).
    if value is None or (value == "None" and spec.none):
        return spec.none
    for t in spec.types:
        if t is bool and isinstance(value, bool):
            return True
        if t in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if t is int and not isinstance(value, int):
                continue
            return True
        if t not in (bool, int, float) and isinstance(value, t):
            return True
    return False


def _walk(spec: Any, value: Any, key: str, v: Validation, origins: Mapping[str, str]) -> None:
    def add(k, msg, suggestion=None):
        v.problems.append(Problem(k, msg, _origin(origins, k), suggestion))

    if spec is ANY:
        return
    if isinstance(spec, T):
        if not _type_ok(spec, value):
            add(key, f"must be {spec.describe()}, got {type(value).__name__} {value!r}")
        elif spec.check is not None and value is not None and not (value == "None" and spec.none):
            msg = spec.check(value)
            if msg:
                add(key, msg)
        return
    if isinstance(spec, ListOf):
        if not isinstance(value, list):
            add(key, f"must be a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _walk(spec.item, item, f"{key}.{i}", v, origins)
        return
    if isinstance(spec, ByType):
        if not isinstance(value, dict):
            add(key, f"must be a mapping, got {type(value).__name__}")
            return
        variants = spec.variants()
        tname = value.get(spec.key)
        tname = spec.aliases.get(tname, tname)
        if tname in spec.unsupported:
            add(f"{key}.{spec.key}", _unsupported(spec.what, tname, spec.unsupported[tname],
                                                  variants))
            return
        if tname not in variants:
            close = difflib.get_close_matches(str(tname), variants, n=1)
            add(f"{key}.{spec.key}", f"unknown {spec.what} {tname!r}; known: {', '.join(variants)}",
                close[0] if close else None)
            return
        _walk(variants[tname], value, key, v, origins)
        return
    assert isinstance(spec, Section)
    if not isinstance(value, dict):
        add(key, f"must be a mapping, got {type(value).__name__} {value!r}")
        return
    for k, item in value.items():
        sub = f"{key}.{k}" if key else str(k)
        if k in spec.refused:
            refusal = spec.refused[k]
            if not refusal.applies(item):
                v.ignored.append(sub)
            elif refusal.inference_note and v.run_mode in ("predict", "eval"):
                v.ignored.append(f"{sub} ({refusal.inference_note})")
            else:
                add(sub, refusal.message(item))
        elif k in spec.fields:
            _walk(spec.fields[k], item, sub, v, origins)
        elif k in spec.ignored:
            v.ignored.append(sub)
        else:
            close = difflib.get_close_matches(str(k), [*spec.fields, *spec.ignored], n=1, cutoff=0.6)
            add(sub, "unknown key", close[0] if close else None)
    for check in spec.checks:
        for k, msg in check(value):
            add(f"{key}.{k}" if key else k, msg)


def _cross_checks(data: Mapping, v: Validation, origins: Mapping[str, str]) -> None:
    """Rules spanning sections."""
    def add(k, msg):
        v.problems.append(Problem(k, msg, _origin(origins, k)))

    callbacks = data.get("callbacks") or []
    if isinstance(callbacks, list):
        for i, cb in enumerate(callbacks):
            if isinstance(cb, dict) and cb.get("type") in IGNORED_CALLBACK_TYPES:
                v.ignored.append(f"callbacks.{i} ({cb['type']})")
    train = data.get("train_dataset")
    if isinstance(train, dict) and train.get("packing") is True and train.get("bucketing") is True:
        add("train_dataset.bucketing", "cannot be combined with train_dataset.packing, which "
            "already fills every row; set one of them to False")
    if "model" not in data:
        add("model", "missing section: petrun needs model.model_config and model.arch")
    elif isinstance(data["model"], dict):
        for sub in ("model_config", "arch"):
            if sub not in data["model"]:
                add(f"model.{sub}", "missing")


def canonicalize(data: dict) -> None:
    """Rewrite old MindFormers spellings in place to the names petrun's code looks for:
    callbacks of type CheckpointMointor (MindFormers' class name until r1.1.0) become
    CheckpointMonitor, so the run saves checkpoints exactly as the file asks."""
    callbacks = data.get("callbacks")
    if isinstance(callbacks, list):
        for cb in callbacks:
            if isinstance(cb, dict) and cb.get("type") in mf.CALLBACK_ALIASES:
                cb["type"] = mf.CALLBACK_ALIASES[cb["type"]]


def validate(data: Mapping, origins: Mapping[str, str]) -> Validation:
    v = Validation(run_mode=data.get("run_mode") if isinstance(data.get("run_mode"), str) else None)
    _walk(ROOT, data, "", v, origins)
    _cross_checks(data, v, origins)
    return v
