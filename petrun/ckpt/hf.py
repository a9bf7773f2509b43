"""Hugging Face safetensors ↔ MindSpore checkpoints with MindFormers' names (mindformers.md §6.4).

    convert_hf_to_ms("llama2", "hf_dir/", "out.ckpt", dtype="bf16")
    convert_ms_to_hf("gpt2", "out.ckpt", "hf_dir/", config=petrun_config)

Every family is a list of `Rule`s: HF tensor name(s) → MindFormers name(s) and one of a few tensor
operations. The same rules, inverted, drive the reverse direction, so the two cannot drift apart.
  llama2  pure renames (HF's rotate-half q/k layout is petrun's/MindFormers': no permutation)
  glm2    transformers' GlmForCausalLM (q/k/v_proj concatenated into the fused query_key_value)
          or THUDM's chatglm2 remote code (only the embedding is renamed); reverse writes the
          transformers layout, which loads without trust_remote_code
  gpt2    Conv1D c_attn [in, 3h] split into thirds and transposed into dense1/2/3 [h, in];
          c_proj, c_fc, mlp c_proj are stored [in, out] on both sides (no transpose)
Conversion streams: one rule's tensors are read, transformed, cast and written before the next
rule starts (petrun.ckpt.stream), so memory holds a few tensors, never the model.
Every source tensor must be used by a rule or be a known buffer to drop; every rule's sources must
exist. Anything else is a UserError naming the tensors.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from petrun.ckpt import stream
from petrun.ckpt.io import is_training_state, refuse_existing
from petrun.ckpt.stream import TensorInfo
from petrun.errors import UserError

FAMILIES = ("llama2", "glm2", "gpt2")
ARCH_OF = {"llama2": ("LlamaForCausalLM",),
           "glm2": ("ChatGLM2ForConditionalGeneration", "ChatGLM2WithPtuning2"),
           "gpt2": ("GPT2LMHeadModel",)}
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16",
                 "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}



@dataclass(frozen=True)
class Rule:
    """HF `sources` → MindSpore `targets` by `op`; `sizes` (rows per part) only for inverting
    a concat. An optional rule (biases, untied heads) is skipped when none of its sources exist."""
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    op: str = "copy"
    optional: bool = False
    sizes: tuple[int, ...] | None = None

    def inverse(self) -> "Rule":
        op = _INVERSE[self.op]
        return Rule(self.targets, self.sources, op, self.optional, self.sizes)


# ---------------------------------------------------------------------------------------------
# Tensor operations: shape rule and numpy implementation (views where numpy allows)


def _split_last_t_shapes(shapes, n):
    (shape,) = shapes
    if shape[-1] % n:
        raise ValueError(f"last axis {shape[-1]} is not divisible by {n}")
    part = tuple(shape[:-1]) + (shape[-1] // n,)
    return [tuple(reversed(part))] * n


def _t_concat_last_shapes(shapes, n):
    parts = [tuple(reversed(s)) for s in shapes]
    if len({p[:-1] for p in parts}) != 1:
        raise ValueError(f"parts {shapes} cannot be joined")
    return [parts[0][:-1] + (sum(p[-1] for p in parts),)]


def _concat0_shapes(shapes, n):
    if len({tuple(s[1:]) for s in shapes}) != 1:
        raise ValueError(f"parts {shapes} cannot be stacked")
    return [(sum(s[0] for s in shapes),) + tuple(shapes[0][1:])]


def _split0_shapes(shapes, sizes):
    (shape,) = shapes
    if sizes is None or sum(sizes) != shape[0]:
        raise ValueError(f"{shape[0]} rows do not split into {sizes}")
    return [(s,) + tuple(shape[1:]) for s in sizes]


_SHAPES: dict[str, Callable] = {
    "copy": lambda shapes, rule: [tuple(shapes[0])],
    "split_last_t": lambda shapes, rule: _split_last_t_shapes(shapes, len(rule.targets)),
    "t_concat_last": lambda shapes, rule: _t_concat_last_shapes(shapes, len(rule.sources)),
    "concat0": lambda shapes, rule: _concat0_shapes(shapes, len(rule.sources)),
    "split0": lambda shapes, rule: _split0_shapes(shapes, rule.sizes),
}
_APPLY: dict[str, Callable] = {
    "copy": lambda arrays, rule: [arrays[0]],
    # HF Conv1D stores [in, out]; the thirds of out are q, k, v; MindFormers' dense is [out, in].
    "split_last_t": lambda arrays, rule: [p.T for p in
                                          np.split(arrays[0], len(rule.targets), axis=-1)],
    "t_concat_last": lambda arrays, rule: [np.concatenate([a.T for a in arrays], axis=-1)],
    "concat0": lambda arrays, rule: [np.concatenate(arrays, axis=0)],
    "split0": lambda arrays, rule: np.split(arrays[0], np.cumsum(rule.sizes)[:-1], axis=0),
}
_INVERSE = {"copy": "copy", "split_last_t": "t_concat_last", "t_concat_last": "split_last_t",
            "concat0": "split0", "split0": "concat0"}


# ---------------------------------------------------------------------------------------------
# Family rules. Each returns (rules, buffers-to-drop regexes) for `layers` decoder layers.


def llama2_rules(layers: int, tied: bool = False) -> tuple[list[Rule], list[str]]:
    """tied: the head is the embedding (tie_word_embeddings), so no lm_head is mapped."""
    rules = [Rule(("model.embed_tokens.weight",), ("model.tok_embeddings.embedding_weight",)),
             Rule(("model.norm.weight",), ("model.norm_out.weight",))]
    drop = [r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"]
    if tied:
        drop.append(r"lm_head\.weight")   # some tied checkpoints still carry the copy
    else:
        rules.append(Rule(("lm_head.weight",), ("lm_head.weight",)))
    for i in range(layers):
        hf, ms = f"model.layers.{i}.", f"model.layers.{i}."
        for a, b in (("q_proj", "wq"), ("k_proj", "wk"), ("v_proj", "wv"), ("o_proj", "wo")):
            rules.append(Rule((f"{hf}self_attn.{a}.weight",), (f"{ms}attention.{b}.weight",)))
            rules.append(Rule((f"{hf}self_attn.{a}.bias",), (f"{ms}attention.{b}.bias",),
                              optional=True))
        for a, b in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
            rules.append(Rule((f"{hf}mlp.{a}.weight",), (f"{ms}feed_forward.{b}.weight",)))
        rules += [Rule((f"{hf}input_layernorm.weight",), (f"{ms}attention_norm.weight",)),
                  Rule((f"{hf}post_attention_layernorm.weight",), (f"{ms}ffn_norm.weight",))]
    return rules, drop


def glm2_rules(layers: int, layout: str = "glm",
               qkv_sizes: tuple[int, int, int] | None = None) -> tuple[list[Rule], list[str]]:
    """layout "glm": transformers' GlmForCausalLM; "chatglm": THUDM's remote-code ChatGLM2.
    qkv_sizes (q rows, k rows, v rows) are needed only to split query_key_value in reverse."""
    enc = "transformer.encoder."
    if layout == "chatglm":
        rules = [Rule(("transformer.embedding.word_embeddings.weight",),
                      ("transformer.embedding.embedding_weight",)),
                 Rule((f"{enc}final_layernorm.weight",), (f"{enc}final_layernorm.weight",)),
                 Rule(("transformer.output_layer.weight",), ("transformer.output_layer.weight",))]
        for i in range(layers):
            p = f"{enc}layers.{i}."
            for name in ("input_layernorm.weight", "self_attention.query_key_value.weight",
                         "self_attention.dense.weight", "post_attention_layernorm.weight",
                         "mlp.dense_h_to_4h.weight", "mlp.dense_4h_to_h.weight"):
                rules.append(Rule((p + name,), (p + name,)))
            rules.append(Rule((p + "self_attention.query_key_value.bias",),
                              (p + "self_attention.query_key_value.bias",), optional=True))
        return rules, [r"transformer\.rotary_pos_emb\.inv_freq"]
    rules = [Rule(("model.embed_tokens.weight",), ("transformer.embedding.embedding_weight",)),
             Rule(("model.norm.weight",), (f"{enc}final_layernorm.weight",)),
             Rule(("lm_head.weight",), ("transformer.output_layer.weight",))]
    for i in range(layers):
        hf, ms = f"model.layers.{i}.", f"{enc}layers.{i}."
        for kind in ("weight", "bias"):
            rules.append(Rule(tuple(f"{hf}self_attn.{x}_proj.{kind}" for x in "qkv"),
                              (f"{ms}self_attention.query_key_value.{kind}",), "concat0",
                              optional=kind == "bias", sizes=qkv_sizes))
        rules += [Rule((f"{hf}self_attn.o_proj.weight",), (f"{ms}self_attention.dense.weight",)),
                  Rule((f"{hf}mlp.gate_up_proj.weight",), (f"{ms}mlp.dense_h_to_4h.weight",)),
                  Rule((f"{hf}mlp.down_proj.weight",), (f"{ms}mlp.dense_4h_to_h.weight",)),
                  Rule((f"{hf}input_layernorm.weight",), (f"{ms}input_layernorm.weight",)),
                  Rule((f"{hf}post_attention_layernorm.weight",),
                       (f"{ms}post_attention_layernorm.weight",))]
    return rules, []


def gpt2_rules(layers: int, prefix: str = "transformer.") -> tuple[list[Rule], list[str]]:
    """prefix: "transformer." as GPT2LMHeadModel.save_pretrained writes, "" for OpenAI's files."""
    emb = "backbone.embedding."
    rules = [Rule((f"{prefix}wte.weight",), (f"{emb}word_embedding.embedding_table",)),
             Rule((f"{prefix}wpe.weight",), (f"{emb}position_embedding.embedding_table",)),
             Rule((f"{prefix}ln_f.weight",), ("backbone.layernorm.gamma",)),
             Rule((f"{prefix}ln_f.bias",), ("backbone.layernorm.beta",))]
    for i in range(layers):
        hf, ms = f"{prefix}h.{i}.", f"backbone.blocks.{i}."
        for kind in ("weight", "bias"):
            rules.append(Rule((f"{hf}attn.c_attn.{kind}",),
                              tuple(f"{ms}attention.dense{j}.{kind}" for j in (1, 2, 3)),
                              "split_last_t"))
        for a, b in (("attn.c_proj", "attention.projection"), ("mlp.c_fc", "output.mapping"),
                     ("mlp.c_proj", "output.projection")):
            rules += [Rule((f"{hf}{a}.weight",), (f"{ms}{b}.weight",)),
                      Rule((f"{hf}{a}.bias",), (f"{ms}{b}.bias",))]
        for a, b in (("ln_1", "layernorm1"), ("ln_2", "layernorm2")):
            rules += [Rule((f"{hf}{a}.weight",), (f"{ms}{b}.gamma",)),
                      Rule((f"{hf}{a}.bias",), (f"{ms}{b}.beta",))]
    # Causal-mask buffers of older transformers, and the head tied to wte (absent when tied).
    return rules, [r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)", r"lm_head\.weight"]


# ---------------------------------------------------------------------------------------------
# Planning: match rules to the tensors that exist


@dataclass
class Step:
    rule: Rule
    source_infos: list[TensorInfo]
    target_infos: list[TensorInfo]


@dataclass
class Plan:
    steps: list[Step]
    dropped: list[str] = field(default_factory=list)

    @property
    def num_tensors(self) -> int:
        return sum(len(s.rule.targets) for s in self.steps)

    def layout(self, dtype: str | None) -> list[tuple[str, TensorInfo]]:
        out = []
        for step in self.steps:
            for name, info in zip(step.rule.targets, step.target_infos):
                out.append((name, _cast_info(info, dtype)))
        return out


def _cast_info(info: TensorInfo, dtype: str | None) -> TensorInfo:
    if dtype is None or info.dtype not in stream.FLOATS:
        return info
    return TensorInfo(dtype, info.shape)


def _listing(names: Iterable[str], n: int = 6) -> str:
    names = sorted(names)
    more = f" (and {len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def make_plan(rules: list[Rule], drop: list[str], infos: dict[str, TensorInfo], where: str,
              key: str = "--src") -> Plan:
    """Check names both ways and compute every output's shape before any data is read."""
    drop_res = [re.compile(p) for p in drop]
    used, missing, steps = set(), [], []
    for rule in rules:
        present = [s for s in rule.sources if s in infos]
        if rule.optional and not present:
            continue
        absent = [s for s in rule.sources if s not in infos]
        if absent:
            missing += absent
            continue
        used.update(present)
        src_infos = [infos[s] for s in rule.sources]
        if len({i.dtype for i in src_infos}) != 1:
            raise UserError(f"{', '.join(rule.sources)} have different dtypes and cannot be "
                            "joined", file=where, key=key)
        try:
            shapes = _SHAPES[rule.op]([i.shape for i in src_infos], rule)
        except ValueError as e:
            raise UserError(f"cannot map {', '.join(rule.sources)} to {', '.join(rule.targets)}: "
                            f"{e}", file=where, key=key,
                            fix="check that --model names this checkpoint's family (and, for "
                                "--reverse, that --config matches the checkpoint)") from None
        steps.append(Step(rule, src_infos, [TensorInfo(src_infos[0].dtype, s) for s in shapes]))
    unknown = [n for n in infos if n not in used and not any(r.fullmatch(n) for r in drop_res)]
    dropped = [n for n in infos if n not in used and n not in unknown]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"{len(missing)} expected tensor(s) are missing: {_listing(missing)}")
        if unknown:
            parts.append(f"{len(unknown)} tensor(s) have no mapping: {_listing(unknown)}")
        raise UserError("; ".join(parts), file=where, key=key,
                        fix="check --model (llama2, glm2, gpt2) and that the checkpoint is "
                            "complete; petrun maps only the tensors of the plain causal LM")
    return Plan(steps, dropped)


def execute(plan: Plan, reader: stream.TensorReader, writer, dtype: str | None,
            progress: Callable[[str], None] | None = None) -> None:
    """Rule by rule: read its sources, transform, cast, write, let go."""
    for step in plan.steps:
        arrays = [reader.read(s) for s in step.rule.sources]
        outputs = _APPLY[step.rule.op](arrays, step.rule)
        del arrays
        for name, array, info in zip(step.rule.targets, outputs, step.target_infos):
            out, out_dtype = stream.cast(array, info.dtype, dtype)
            writer.write(name, out, out_dtype)
            if progress is not None:
                progress(name)
        del outputs


# ---------------------------------------------------------------------------------------------
# HF side: config.json, layer count, layout detection


def _read_hf_config(src: Path) -> dict:
    folder = src if src.is_dir() else src.parent
    path = folder / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"config.json is not valid JSON ({e})", file=str(path)) from None


_LAYER_RE = {"llama2": r"model\.layers\.(\d+)\.", "gpt2": r"(?:transformer\.)?h\.(\d+)\.",
             "glm2": r"(?:model\.layers|transformer\.encoder\.layers)\.(\d+)\."}
_HF_TYPES = {"llama2": ("llama",), "gpt2": ("gpt2",), "glm2": ("glm", "chatglm")}
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def _count_layers(family: str, names: Iterable[str], hf_config: dict) -> int:
    for k in _LAYER_KEYS:
        if isinstance(hf_config.get(k), int):
            return hf_config[k]
    rx = re.compile(_LAYER_RE[family])
    found = [int(m.group(1)) for n in names if (m := rx.match(n))]
    return max(found) + 1 if found else 0


def hf_rules(family: str, infos: dict[str, TensorInfo], hf_config: dict,
             where: str) -> tuple[list[Rule], list[str]]:
    model_type = hf_config.get("model_type")
    if model_type and model_type not in _HF_TYPES[family]:
        guess = next((f for f, types in _HF_TYPES.items() if model_type in types), None)
        raise UserError(f"config.json says model_type {model_type!r}, not a {family} model",
                        file=where, key="--model",
                        fix=f"use --model {guess}" if guess else
                        f"--model must match the checkpoint ({', '.join(FAMILIES)})")
    layers = _count_layers(family, infos, hf_config)
    if family == "llama2":
        # config.json decides; without one, a checkpoint with no lm_head is taken as tied.
        tied = hf_config.get("tie_word_embeddings", "lm_head.weight" not in infos)
        return llama2_rules(layers, tied=bool(tied))
    if family == "glm2":
        layout = "chatglm" if "transformer.embedding.word_embeddings.weight" in infos else "glm"
        return glm2_rules(layers, layout)
    prefix = "transformer." if any(n.startswith("transformer.") for n in infos) else ""
    return gpt2_rules(layers, prefix)


# ---------------------------------------------------------------------------------------------
# Entry points


def canonical_dtype(dtype: str | None) -> str | None:
    if dtype is None:
        return None
    name = DTYPE_ALIASES.get(str(dtype).lower())
    if name is None:
        raise UserError(f"unknown dtype {dtype!r}", key="--dtype",
                        fix="use fp32, fp16 or bf16 (or leave it out to keep the source dtype)")
    return name


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise UserError(f"unknown model family {family!r}", key="--model",
                        fix=f"use one of: {', '.join(FAMILIES)}")


@dataclass
class Result:
    dst: Path
    tensors: int
    dropped: list[str]
    bytes_written: int


def convert_hf_to_ms(family: str, src: str | Path, dst: str | Path, dtype: str | None = None,
                     progress: Callable[[str], None] | None = None,
                     on_plan: Callable[[Plan], None] | None = None,
                     overwrite: bool = False) -> Result:
    """HF safetensors (file, folder, or sharded folder) → one MindSpore .ckpt with MindFormers'
    names. dtype None keeps each tensor's dtype; otherwise floats become fp32/fp16/bf16.
    An existing dst is replaced (atomically) only with overwrite."""
    _check_family(family)
    dtype = canonical_dtype(dtype)
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".ckpt":
        raise UserError("the output must be a .ckpt file", file=str(dst), key="--dst",
                        fix=f"e.g. --dst {dst.with_suffix('.ckpt').name}")
    refuse_existing(dst, overwrite)
    with stream.SafetensorsReader(src) as reader:
        hf_config = _read_hf_config(src)
        rules, drop = hf_rules(family, reader.infos, hf_config, str(src))
        plan = make_plan(rules, drop, reader.infos, str(src))
        if on_plan is not None:
            on_plan(plan)
        writer = stream.CkptWriter(dst)
        try:
            execute(plan, reader, writer, dtype, progress)
            path = writer.commit()
        except BaseException:
            writer.abort()
            raise
    return Result(path, plan.num_tensors, plan.dropped, path.stat().st_size)


def _family_config(family: str, config) -> Any:
    """The typed model config of a petrun Config (or YAML path) for `family`."""
    from petrun.config import Config, load_config
    from petrun.models.registry import build_config
    if config is None:
        raise UserError("--reverse needs the model's petrun config to write HF's config.json",
                        key="--config", fix="add --config configs/<family>/<file>.yaml")
    cfg = config if isinstance(config, Config) else load_config(str(config))
    arch = cfg.get("model.arch.type")
    if arch not in ARCH_OF[family]:
        raise UserError(f"the config's model.arch.type is {arch!r}, not a {family} model",
                        file=cfg.source, key="model.arch.type",
                        fix=f"pass a {family} config or --model for {arch}")
    return build_config(cfg.get("model"))


def _config_rules(family: str, mc) -> list[Rule]:
    """The forward (transformers → MindSpore) rules for a typed model config."""
    if family == "llama2":
        rules, _ = llama2_rules(mc.num_layers, tied=bool(mc.tie_word_embeddings))
    elif family == "glm2":
        q, kv = mc.num_attention_heads * mc.kv_channels, mc.kv_heads * mc.kv_channels
        rules, _ = glm2_rules(mc.num_layers, "glm", qkv_sizes=(q, kv, kv))
    else:
        rules, _ = gpt2_rules(mc.num_layers)
    return rules


def ms_rules(family: str, mc) -> tuple[list[Rule], list[str]]:
    """Reverse rules (MindSpore → transformers layout) for a typed model config."""
    return [r.inverse() for r in _config_rules(family, mc)], []


@dataclass(frozen=True)
class ModuleLink:
    """A MindFormers module and its transformers module(s), read off the weight rules above:
    "same" one to one; "split": its output rows are the HF modules' (`rows` each, in order;
    GLM2's query_key_value = q|k|v_proj); "part": it is third `part` of one fused HF module
    (GPT-2's dense1..3 in c_attn)."""
    hf: tuple[str, ...]
    kind: str = "same"
    part: int = 0
    rows: tuple[int, ...] = ()


def module_links(family: str, mc) -> dict[str, ModuleLink]:
    """{MindFormers module: ModuleLink} for every linear/norm weight of a typed model config: the
    one HF ↔ MindFormers name map, which PEFT conversion (ckpt/peft_format.py) reads too."""
    _check_family(family)
    rules = _config_rules(family, mc)
    links: dict[str, ModuleLink] = {}
    for rule in rules:   # HF sources → MindFormers targets
        if not all(n.endswith(".weight") for n in rule.sources + rule.targets):
            continue     # biases, embeddings (embedding_weight/table), layer-norm gamma/beta
        hf_mods = tuple(n[:-len(".weight")] for n in rule.sources)
        ms_mods = [n[:-len(".weight")] for n in rule.targets]
        if rule.op == "copy":
            links[ms_mods[0]] = ModuleLink(hf_mods)
        elif rule.op == "concat0":
            links[ms_mods[0]] = ModuleLink(hf_mods, "split", rows=tuple(rule.sizes))
        elif rule.op == "split_last_t":
            for j, ms in enumerate(ms_mods):
                links[ms] = ModuleLink(hf_mods, "part", part=j)
        else:
            raise ValueError(f"no module link for a {rule.op} rule")
    return links


def hf_config_dict(family: str, mc, dtype: str) -> dict:
    """transformers' config.json for a petrun model config (the architecture petrun computes)."""
    if family == "llama2":
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "hidden_size": mc.hidden_size, "intermediate_size": mc.ffn_hidden_size,
                "num_hidden_layers": mc.num_layers, "num_attention_heads": mc.num_heads,
                "num_key_value_heads": mc.kv_heads, "head_dim": mc.head_dim,
                "vocab_size": mc.vocab_size, "rms_norm_eps": float(mc.rms_norm_eps),
                "rope_theta": float(mc.theta), "max_position_embeddings": mc.max_positions,
                "hidden_act": "silu", "attention_bias": bool(mc.qkv_has_bias),
                "mlp_bias": False, "tie_word_embeddings": bool(mc.tie_word_embeddings),
                "bos_token_id": mc.bos_token_id, "eos_token_id": mc.eos_token_id,
                "pad_token_id": mc.pad_token_id, "torch_dtype": dtype}
    if family == "glm2":
        return {"architectures": ["GlmForCausalLM"], "model_type": "glm",
                "hidden_size": mc.hidden_size, "intermediate_size": mc.ffn_hidden_size,
                "num_hidden_layers": mc.num_layers, "num_attention_heads": mc.num_attention_heads,
                "num_key_value_heads": mc.kv_heads, "head_dim": mc.kv_channels,
                "partial_rotary_factor": 0.5, "rope_theta": 10000.0 * float(mc.rope_ratio),
                "vocab_size": mc.vocab, "rms_norm_eps": float(mc.layernorm_epsilon),
                "max_position_embeddings": mc.seq_length, "hidden_act": "silu",
                "attention_bias": bool(mc.add_qkv_bias or mc.add_bias_linear),
                "attention_dropout": float(mc.attention_dropout), "tie_word_embeddings": False,
                "pad_token_id": mc.pad_token_id, "eos_token_id": mc.eos_token_id,
                "bos_token_id": mc.bos_token_id, "torch_dtype": dtype}
    # MindSpore's fast_gelu is x·sigmoid(1.702x), which transformers calls quick_gelu.
    act = {"gelu": "gelu_new", "fast_gelu": "quick_gelu"}[mc.hidden_act]
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "n_embd": mc.hidden_size, "n_layer": mc.num_layers, "n_head": mc.num_heads,
            "n_positions": mc.max_positions, "n_inner": mc.ffn_hidden_size,
            "vocab_size": mc.vocab_size, "layer_norm_epsilon": 1e-5, "activation_function": act,
            "embd_pdrop": float(mc.embedding_dropout_prob), "resid_pdrop": float(mc.hidden_dropout_rate),
            "attn_pdrop": float(mc.attention_dropout_rate), "tie_word_embeddings": True,
            "bos_token_id": mc.bos_token_id, "eos_token_id": mc.eos_token_id,
            "torch_dtype": dtype}


def check_glm2_for_hf(mc) -> None:
    """A UserError when transformers' GlmForCausalLM cannot express this ChatGLM2 config."""
    problems = [k for k, bad in (("multi_query_attention", not mc.multi_query_attention),
                                 ("add_bias_linear", mc.add_bias_linear),
                                 ("post_layer_norm", not mc.post_layer_norm),
                                 ("apply_residual_connection_post_layernorm",
                                  mc.apply_residual_connection_post_layernorm)) if bad]
    if problems:
        raise UserError(f"transformers' GlmForCausalLM cannot express {', '.join(problems)} as "
                        "set in this config", key=f"model.model_config.{problems[0]}",
                        fix="only ChatGLM2-6B-style configs convert back to HF")


def convert_ms_to_hf(family: str, src: str | Path, dst: str | Path, config,
                     dtype: str | None = None, progress: Callable[[str], None] | None = None,
                     on_plan: Callable[[Plan], None] | None = None,
                     overwrite: bool = False) -> Result:
    """A MindSpore .ckpt with MindFormers' names → dst/model.safetensors + dst/config.json in
    transformers' layout for the family (LlamaForCausalLM, GlmForCausalLM, GPT2LMHeadModel).
    Optimizer state and step counters are skipped; adapter (mindpet_delta_*) tensors are an
    error: merge them into the base weights first. Existing outputs are replaced only with
    overwrite."""
    _check_family(family)
    dtype = canonical_dtype(dtype)
    mc = _family_config(family, config)
    if family == "glm2":
        check_glm2_for_hf(mc)
    src, dst = Path(src), Path(dst)
    if dst.exists() and not dst.is_dir():
        raise UserError("--reverse writes a folder (model.safetensors + config.json), and this "
                        "path is a file", file=str(dst), key="--dst", fix="name a folder")
    stale = sorted(p.name for p in dst.glob("*.safetensors*") if p.name != "model.safetensors") \
        if dst.is_dir() else []
    if stale:   # HF loaders would prefer an old index.json or shard over the new file
        raise UserError(f"the folder already holds other weights ({', '.join(stale[:3])})",
                        file=str(dst), key="--dst", fix="write into a new or empty folder")
    for name in ("model.safetensors", "config.json"):
        refuse_existing(dst / name, overwrite)
    with stream.CkptReader(src) as reader:
        infos = {n: i for n, i in reader.infos.items() if not is_training_state(n)}  # skipped by --reverse
        adapters = [n for n in infos if "mindpet_delta_" in n]
        if adapters:
            raise UserError(f"the checkpoint holds adapter tensors ({_listing(adapters, 3)})",
                            file=str(src), key="--src",
                            fix="convert the base checkpoint, or merge the adapter into the base "
                                "weights and save the merged network first")
        rules, drop = ms_rules(family, mc)
        plan = make_plan(rules, drop, infos, str(src))
        plan.dropped += [n for n in reader.infos if n not in infos]
        if on_plan is not None:
            on_plan(plan)
        layout = plan.layout(dtype)
        out_dtype = dtype or (layout[0][1].dtype if layout else "float32")
        writer = stream.SafetensorsWriter(dst / "model.safetensors", layout,
                                          metadata={"format": "pt"})
        try:
            execute(plan, reader, writer, dtype, progress)
            path = writer.commit()
        except BaseException:
            writer.abort()
            raise
    config_json = json.dumps(hf_config_dict(family, mc, out_dtype), indent=2) + "\n"
    cfg_writer = stream.AtomicFile(dst / "config.json")
    cfg_writer.f.write(config_json.encode("utf-8"))
    cfg_writer.commit()
    return Result(path, plan.num_tensors, plan.dropped, path.stat().st_size)
