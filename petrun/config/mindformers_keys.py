"""MindFormers r1.0–r1.3 keys petrun accepts but ignores, refuses with a reason, or names as
unsupported, each with the release whose source introduced it.

Grounded in MindFormers' source (github mindspore-lab/mindformers, branches r1.0, r1.1.0, r1.2.0,
r1.3.0), not in sample files: the `__init__` arguments of the config classes (LlamaConfig,
ChatGLM2Config, GPT2Config, PretrainedConfig, GenerationConfig), callbacks, the runner wrapper,
dataset classes and tokenizers, plus the attributes their model code reads. Every one of those
classes takes `**kwargs`, so MindFormers itself silently accepts any key; petrun stays strict and
lists here what real releases define, so a file from any of them loads.

Three kinds of entry:
  Ignored   petrun accepts the key and does not act on it, because it only drives an Ascend kernel,
            an export path or bookkeeping — the trained weights and the loss are the same without
            it. `petrun config show` lists these keys.
  Refused   ignoring the key would change results (quantized layers, MoE experts, EOD-reset
            attention, encrypted checkpoints, beam search): when it is set to a value that does
            something, validation stops with the reason and a fix, instead of "unknown key".
  UNSUPPORTED_*  values of `type`-like keys that name MindFormers classes petrun does not build;
            the error quotes the value and says what petrun supports instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Ignored:
    since: str          # first release whose source defines or reads the key
    source: str         # the class or function that reads it there
    why: str            # what it does in MindFormers, i.e. why petrun may ignore it
    until: str = ""     # last release of r1.0–r1.3 that still has it, when it was dropped


@dataclass(frozen=True)
class Refused:
    since: str
    source: str
    applies: Callable[[Any], bool]   # value -> True when the setting would do something
    reason: str                      # why ignoring it would change results
    fix: str
    # Refused only for training (train/finetune): for predict/eval the key is ignored, listed by
    # `config show` with `inference_note`, and the run proceeds unchanged otherwise.
    inference_note: str = ""

    def message(self, value: Any) -> str:
        return (f"{_short(value)} is not supported: {self.reason} (MindFormers {self.since}+, "
                f"{self.source}). Fix: {self.fix}")


def _short(value: Any) -> str:
    """The value as written, cut to its first entry: a quantization_config is a dozen keys."""
    if isinstance(value, dict) and len(value) > 1:
        k, v = next(iter(value.items()))
        return f"{{{k!r}: {v!r}, ...}}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _set(v: Any) -> bool:
    """A value that switches something on: not null/'None'/''/False/0/{}/[]."""
    return v not in (None, "None", "", False, 0, {}, [])


def _more_than_one(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 1


def _moe_on(v: Any) -> bool:
    return isinstance(v, dict) and _more_than_one(v.get("expert_num", 1))


_GEN = "GenerationConfig (built from the model config for generate())"
_GEN_WHY = "generation setting read only by generate(); petrun predict takes it from its flags"
_ASCEND = "selects an Ascend kernel or graph layout; the computed numbers are the same"

# ------------------------------------------------------------------- model.model_config
MODEL_CONFIG_IGNORED: dict[str, Ignored] = {
    "compute_in_2d": Ignored("r1.0", "LlamaConfig", "reshapes activations to 2-D for Ascend "
                             "matmuls; " + _ASCEND, until="r1.1.0"),
    "pretrain_seqlen": Ignored("r1.0", "LlamaConfig", "stored on the config, read by no model "
                               "code", until="r1.1.0"),
    "use_kvcache_op": Ignored("r1.0", "LlamaConfig, ChatGLM2Config (r1.0)", "Ascend KV-cache "
                              "operator for incremental inference; petrun's predict keeps its own "
                              "KV cache with the same results", until="r1.1.0"),
    "is_flexible_shape": Ignored("r1.0", "LlamaConfig, ChatGLM2Config (r1.0)", "dynamic-shape "
                                 "MindIR export for MindSpore Lite", until="r1.1.0"),
    "use_incre_flash_attention": Ignored("r1.0", "ChatGLM2Config (r1.0–r1.1.0), LlamaConfig "
                                         "(r1.1.0)", "incremental flash-attention kernel for "
                                         "decoding on Ascend; " + _ASCEND, until="r1.1.0"),
    "no_recompute_layers": Ignored("r1.0", "ChatGLM2Config", "layers left out of activation "
                                   "recomputation: memory and speed only", until="r1.1.0"),
    "mask_type": Ignored("r1.0", "ChatGLM2Config", "dtype of the 0/1 attention mask, exact in "
                         "any dtype", until="r1.0"),
    "embedding_type": Ignored("r1.0", "ChatGLM2Config", "dtype of the embedding lookup on "
                              "Ascend; petrun's embedding follows param_init_type/compute_dtype",
                              until="r1.0"),
    "prefix_name": Ignored("r1.0", "ChatGLM2Config", "names the graphs of a MindIR export "
                           "(prepare_inputs_for_export)", until="r1.0"),
    "is_sample_acceleration": Ignored("r1.0", "PretrainedConfig (r1.1.0+; r1.0 export configs)",
                                      "samples the next token inside the graph on Ascend; same "
                                      "distribution"),
    "name_or_path": Ignored("r1.1.0", "PretrainedConfig", "bookkeeping of from_pretrained"),
    "mindformers_version": Ignored("r1.1.0", "PretrainedConfig", "version stamp"),
    "tokenizer_class": Ignored("r1.1.0", "PretrainedConfig", "bookkeeping; petrun reads "
                               "processor.tokenizer"),
    "is_encoder_decoder": Ignored("r1.1.0", "PretrainedConfig", "bookkeeping; all three "
                                  "families are decoders"),
    "architectures": Ignored("r1.2.0", "PretrainedConfig", "bookkeeping; petrun reads "
                             "model.arch.type"),
    "parallel_decoding_params": Ignored("r1.3.0", "LlamaForCausalLM", "lookahead/parallel "
                                        "decoding inputs of MindFormers' serving path"),
    # Generation settings (GenerationConfig.__init__ pops them from the model config).
    "max_new_tokens": Ignored("r1.0", _GEN, _GEN_WHY + " (--max-new-tokens)"),
    "temperature": Ignored("r1.0", _GEN, _GEN_WHY + " (--temperature)"),
    "min_length": Ignored("r1.1.0", _GEN, _GEN_WHY),
    "min_new_tokens": Ignored("r1.1.0", _GEN, _GEN_WHY),
    "encoder_repetition_penalty": Ignored("r1.0", _GEN, "encoder-decoder models only"),
    "renormalize_logits": Ignored("r1.0", _GEN, _GEN_WHY),
    "return_dict_in_generate": Ignored("r1.2.0", _GEN, "output format of generate()"),
    "output_scores": Ignored("r1.2.0", _GEN, "output format of generate()"),
    "output_logits": Ignored("r1.2.0", _GEN, "output format of generate()"),
    "parallel_decoding": Ignored("r1.3.0", _GEN, "lookahead decoding, same greedy output"),
    "window_size": Ignored("r1.3.0", _GEN, "lookahead decoding window"),
    "level": Ignored("r1.3.0", _GEN, "lookahead decoding n-gram level"),
    "guess_set_size": Ignored("r1.3.0", _GEN, "lookahead decoding guesses"),
}

_NO_QUANT = ("petrun does not quantize. MindFormers replaces the Linear layers by quantized ones "
             "(int8 weights/activations/KV cache), so petrun would run a different model")
_QUANT_FIX = ("delete the key (override ~{key}) to run the model unquantized in its compute_dtype, "
              "or run quantized inference with MindFormers and MindSpore Golden Stick")
_QUANT_NOTE = ("not quantized: petrun predicts with the unquantized weights in compute_dtype "
               "(more memory than MindFormers' quantized run)")
MODEL_CONFIG_REFUSED: dict[str, Refused] = {
    # r1.3.0 mindformers/models/build_model.py build_network: `if quant_config:` → AutoQuantizer
    # preprocess_model, for every run mode (rtn, smooth_quant and ptq predict configs).
    # Training on quantized layers trains another model, so it is refused there. MindFormers'
    # rtn/smooth_quant predict configs are post-training quantizations of the same weights for
    # inference memory: petrun predicts with the unquantized weights (the reference they
    # approximate), says so, and accepts the file, as users bring these files unchanged.
    "quantization_config": Refused("r1.3.0", "build_network + AutoQuantizer", _set, _NO_QUANT,
                                   _QUANT_FIX.format(key="model.model_config.quantization_config"),
                                   inference_note=_QUANT_NOTE),
    "quant_config": Refused("r1.3.0", "LlamaConfig", _set, _NO_QUANT,
                            _QUANT_FIX.format(key="model.model_config.quant_config"),
                            inference_note=_QUANT_NOTE),
    "quant": Refused("r1.2.0", "LlamaConfig (e.g. quant: 'w8a16')", _set, _NO_QUANT,
                     "leave it empty (quant: '') or delete it", inference_note=_QUANT_NOTE),
    "moe_config": Refused("r1.0", "GPT2Config, LlamaConfig (r1.1.0+)", _moe_on,
                          "expert_num > 1 makes the feed-forward layers mixture-of-experts; "
                          "petrun's models are dense", "set moe_config.expert_num: 1 or delete it"),
    "num_beams": Refused("r1.0", _GEN, _more_than_one, "beam search; petrun predict decodes "
                         "greedily or samples", "set num_beams: 1 (or delete it)"),
}

# ------------------------------------------------------------------- top level
ROOT_IGNORED: dict[str, Ignored] = {
    "infer": Ignored("r1.0", "export_*.yaml + MindFormers' MindIR export / Lite inference",
                     "paths of exported MindIR graphs; petrun does not export MindIR"),
}
ROOT_REFUSED: dict[str, Refused] = {
    # build_model copies the top-level moe_config into model_config (r1.0+).
    "moe_config": MODEL_CONFIG_REFUSED["moe_config"],
}

# ------------------------------------------------------------------- runner_wrapper
RUNNER_WRAPPER_IGNORED: dict[str, Ignored] = {
    # MFTrainOneStepCell(..., **kwargs) swallows it; no MindFormers code of r1.0–r1.3 reads it.
    "enable_check_overflow": Ignored("r1.1.0", "MFTrainOneStepCell **kwargs (read nowhere)",
                                     "MindFormers itself ignores it"),
    "micro_batch_num": Ignored("r1.0", "MFPipelineWithLossScaleCell", "set from "
                               "parallel_config.micro_batch_num, which petrun reads"),
}

# ------------------------------------------------------------------- callbacks
# MindFormers' checkpoint callback was spelt CheckpointMointor until r1.1.0 (class name, not a
# typo in the configs) and CheckpointMonitor from r1.2.0; both name the same ModelCheckpoint.
CALLBACK_ALIASES = {"CheckpointMointor": "CheckpointMonitor"}

CHECKPOINT_MONITOR_IGNORED: dict[str, Ignored] = {
    "config": Ignored("r1.0", "CheckpointMonitor", "a ready CheckpointConfig object (Python API)"),
    "saved_network": Ignored("r1.0", "CheckpointMonitor", "Python API: another network to save"),
    "append_info": Ignored("r1.0", "CheckpointMonitor", "epoch/step stamps; petrun stores its own"),
    "enc_mode": Ignored("r1.0", "CheckpointMonitor", "cipher for enc_key, which petrun refuses"),
    "global_batch_size": Ignored("r1.3.0", "CheckpointMonitor", "filled in by the trainer"),
}
CHECKPOINT_MONITOR_REFUSED: dict[str, Refused] = {
    "enc_key": Refused("r1.0", "CheckpointMonitor", _set, "MindFormers encrypts the checkpoint "
                       "with it; petrun writes plain checkpoints", "delete enc_key"),
}
LOSS_MONITOR_IGNORED: dict[str, Ignored] = {
    "calculate_per_token_loss": Ignored("r1.3.0", "MFLossMonitor", "how the logged loss is "
                                        "averaged over micro-batches (logging only)"),
}
PROFILE_MONITOR_IGNORED = ("output_path", "start_profile", "profile_communication",
                           "profile_memory", "profile_rank_ids", "profile_pipeline", "config",
                           "profiler_level", "with_stack", "data_simplification")   # r1.0 / r1.3.0
OBS_MONITOR_IGNORED = ("src_dir", "target_dir", "step_upload_frequence",
                       "epoch_upload_frequence")                                    # r1.0
SUMMARY_MONITOR_IGNORED = ("collect_specified_data", "keep_default_action", "custom_lineage_data",
                           "collect_tensor_freq", "max_file_size", "export_options")  # r1.0

# ------------------------------------------------------------------- datasets
DATASET_IGNORED: dict[str, Ignored] = {
    "max_seq_length": Ignored("r1.1.0", "KeyWordGenDataset (ToolAlpacaDataLoader multi-turn)",
                              "only read for ToolAlpacaDataLoader, which petrun refuses"),
    "eod_token_id": Ignored("r1.0", "CausalLanguageModelDataset", "only read with eod_reset, "
                            "which petrun refuses"),
    "auto_tune": Ignored("r1.0", "CausalLanguageModelDataset", "MindData autotune: speed only"),
    "autotune_per_step": Ignored("r1.0", "CausalLanguageModelDataset", "MindData autotune"),
    "filepath_prefix": Ignored("r1.0", "CausalLanguageModelDataset", "MindData autotune output"),
    "profile": Ignored("r1.0", "CausalLanguageModelDataset", "MindData profiling"),
    "dynamic_batch": Ignored("r1.3.0", "CausalLanguageModelDataset", "pads each batch to its "
                             "longest sample (padding only; see petrun's bucketing)"),
    "divisor": Ignored("r1.3.0", "CausalLanguageModelDataset", "dynamic_batch padding multiple"),
    "remainder": Ignored("r1.3.0", "CausalLanguageModelDataset", "dynamic_batch padding rest"),
    "pad_token_id": Ignored("r1.3.0", "CausalLanguageModelDataset", "dynamic_batch pad id"),
}
DATASET_REFUSED: dict[str, Refused] = {
    "eod_reset": Refused("r1.0", "CausalLanguageModelDataset", lambda v: v is True,
                         "MindFormers resets position ids and the attention mask at every EOD "
                         "token of a sample, which petrun's loader does not",
                         "set eod_reset: False, or use petrun's train_dataset.packing: True "
                         "(short samples share a row, attention stays inside each sample)"),
}

# ------------------------------------------------------------------- processor.tokenizer
TOKENIZER_IGNORED: dict[str, Ignored] = {
    "model_max_length": Ignored("r1.1.0", "PreTrainedTokenizerBase", "length bound for "
                                "tokenizer calls; petrun's data tools take --seq-length"),
    "max_len": Ignored("r1.1.0", "PreTrainedTokenizerBase", "old name of model_max_length"),
    "truncation_side": Ignored("r1.1.0", "PreTrainedTokenizerBase", "petrun's data tools "
                               "truncate the response end, as MindFormers' preprocessing does"),
    "model_input_names": Ignored("r1.1.0", "PreTrainedTokenizerBase", "output key names"),
    "clean_up_tokenization_spaces": Ignored("r1.0", "LlamaTokenizer, PreTrainedTokenizerBase",
                                            "decode-time whitespace cleanup"),
    "split_special_tokens": Ignored("r1.1.0", "PreTrainedTokenizerBase", "HF fast-tokenizer "
                                    "option; False (the default) is petrun's behaviour"),
    "processor_class": Ignored("r1.1.0", "PreTrainedTokenizerBase", "bookkeeping"),
    "name_or_path": Ignored("r1.1.0", "PreTrainedTokenizerBase", "bookkeeping"),
    "use_default_system_prompt": Ignored("r1.0", "LlamaTokenizerFast", "chat-template default; "
                                         "petrun's templates are set by chat_template"),
    "errors": Ignored("r1.0", "GPT2Tokenizer", "byte-decoding error mode (decode only)"),
    "sep_token": Ignored("r1.1.0", "PreTrainedTokenizerBase", "special token unused by the three "
                         "causal LM families"),
    "cls_token": Ignored("r1.1.0", "PreTrainedTokenizerBase", "special token unused by the three "
                         "causal LM families"),
    "additional_special_tokens": Ignored("r1.1.0", "PreTrainedTokenizerBase", "extra special "
                                         "tokens of the vocabulary file"),
}
TOKENIZER_REFUSED: dict[str, Refused] = {
    "sp_model_kwargs": Refused("r1.0", "LlamaTokenizer", _set, "SentencePiece options (e.g. "
                               "subword sampling) change the token ids; petrun tokenizes "
                               "deterministically", "delete sp_model_kwargs"),
}

# ------------------------------------------------------------------- context / parallel
# MindFormers passes `context:` to mindspore.set_context and `parallel:` to
# set_auto_parallel_context as they are, so their keys are MindSpore's (2.2–2.4 for r1.0–r1.3).
CONTEXT_IGNORED: dict[str, Ignored] = {
    k: Ignored("r1.0", "mindspore.set_context", "MindSpore runtime/compiler setting")
    for k in ("variable_memory_max_size", "enable_reduce_precision", "reserve_class_name_in_scope",
              "print_file_path", "env_config_path", "check_bprop", "inter_op_parallel_num",
              "disable_format_transform", "support_binary", "op_timeout", "pynative_synchronize",
              "aoe_tune_mode", "aoe_config", "jit_syntax_level", "debug_level", "exec_order",
              "gpu_config", "enable_dump", "save_dump_path", "enable_profiling",
              "profiling_options", "grad_for_scalar", "enable_sparse", "auto_tune_mode")
}
CONTEXT_IGNORED.update({
    "train_precision_sync": Ignored("r1.3.0", "MindFormers build_context", "Ascend "
                                    "deterministic-precision switch"),
    "infer_precision_sync": Ignored("r1.3.0", "MindFormers build_context", "Ascend "
                                    "deterministic-precision switch"),
    "jit_level": Ignored("r1.3.0", "MindFormers build_context", "graph compile level"),
    "infer_boost": Ignored("r1.3.0", "MindFormers build_context", "Ascend inference kernels"),
})
PARALLEL_IGNORED: dict[str, Ignored] = {
    k: Ignored("r1.0", "mindspore.set_auto_parallel_context", "MindSpore parallel-runtime "
               "setting (communication fusion, broadcast, dumps); same numbers")
    for k in ("all_reduce_fusion_config", "auto_parallel_search_mode", "parameter_broadcast",
              "gradient_fp32_sync", "global_rank", "group_ckpt_save_file", "pipeline_stages",
              "dump_local_norm", "dump_local_norm_path", "dump_device_local_norm",
              "force_fp32_communication", "pipeline_result_broadcast")
}
PARALLEL_CONFIG_IGNORED: dict[str, Ignored] = {
    "recompute": Ignored("r1.0", "TransformerOpParallelConfig", "MindFormers fills it from "
                         "recompute_config, which petrun reads"),
}

# ------------------------------------------------------------------- unsupported values
ARCHS_SUPPORTED = "LlamaForCausalLM, ChatGLM2ForConditionalGeneration, ChatGLM2WithPtuning2, " \
                  "GPT2LMHeadModel"
UNSUPPORTED_ARCHS: dict[str, str] = {
    "GPT2ForSequenceClassification": "GPT2 with a text-classification head (MindFormers' txtcls "
                                     "task); petrun finetunes causal language models only",
    "ParallelLlamaForCausalLM": "MindFormers' inference-only tensor-parallel Llama of the ptq "
                                "predict configs; petrun's Llama is LlamaForCausalLM",
    "LlmBoostForCausalLM": "MindFormers' llm_boost inference backend (research/llm_boost); "
                           "petrun builds its own models",
}
UNSUPPORTED_MODEL_CONFIGS: dict[str, str] = {
    "LlmBoostConfig": "the config of MindFormers' llm_boost inference backend "
                      "(research/llm_boost); petrun builds its own models",
}
UNSUPPORTED_PET_TYPES: dict[str, str] = {
    "slora": "S-LoRA, MindFormers' multi-adapter serving for predict (r1.3.0); petrun trains "
             "and predicts with one adapter",
}
UNSUPPORTED_DATA_LOADERS: dict[str, str] = {
    "ToolAlpacaDataLoader": "the multi-turn tool-use loader of ChatGLM3 (r1.1.0+); petrun "
                            "reads tokenized MindRecord/JSON, alpaca and AdvertiseGen data",
}


def describe(table: dict[str, Ignored]) -> list[str]:
    """'key: since rX (Source) — why' lines, for docs and `config show`."""
    out = []
    for key, e in sorted(table.items()):
        span = f"{e.since}–{e.until}" if e.until and e.until != e.since else e.since
        out.append(f"{key}: MindFormers {span} ({e.source}) — {e.why}")
    return out
