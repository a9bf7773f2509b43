"""HF PEFT's adapter format ↔ petrun adapter checkpoints. The one place that knows PEFT's names.

    export_peft(config, "adapter.ckpt", "peft_dir/")   → adapter_config.json + adapter_model.safetensors
    import_peft(config, "peft_dir/", "adapter.ckpt")   → a petrun adapter-only .ckpt

The model side is always the transformers model that `petrun ckpt convert --reverse` writes for the
same base weights (LlamaForCausalLM, GlmForCausalLM, GPT2LMHeadModel). Names:

  petrun (MindFormers)                          PEFT (prefix base_model.model. for layer methods)
  <layer>.mindpet_delta_lora_a  [r, in]         <hf module>.lora_A.weight  [r, in]
  <layer>.mindpet_delta_lora_b  [out, r]        <hf module>.lora_B.weight  [out, r]
  <layer>.mindpet_delta_ia3_l   [out,1]/[1,in]  <hf module>.ia3_l          (same shape)
  mindpet_delta_prompt_tuning_embedding.embedding_table [P, hidden]
                                                prompt_embeddings (PROMPT_TUNING)
  mindpet_delta_ptuning_* (table + MLP/LSTM)    prompt_embeddings = the encoder's output (P_TUNING)
  [prefix_encoder.]mindpet_delta_ptuning2_* /   prompt_embeddings = the prefix [P, 2·L·n_kv·head_dim]
  mindpet_delta_prefixtuning_*                  (PREFIX_TUNING, prefix_projection false)
  mindpet_delta_adapter_*                       none: PEFT has no bottleneck adapters

Layers (ckpt/hf.py's module_links: the rules checkpoint conversion uses, read per module):
  llama2  wq/wk/wv/wo → self_attn.q/k/v/o_proj; w1/w3/w2 → mlp.gate/up/down_proj (one to one)
  glm2    query_key_value → self_attn.q_proj | k_proj | v_proj (its rows split), dense → o_proj,
          dense_h_to_4h → mlp.gate_up_proj, dense_4h_to_h → mlp.down_proj, output_layer → lm_head
  gpt2    dense1 | dense2 | dense3 → thirds of attn.c_attn (fused, Conv1D), attention.projection →
          attn.c_proj, output.mapping → mlp.c_fc, output.projection → mlp.c_proj
Exact conversions only; anything that would change the numbers is an error that says why:
  - a fused GLM2 query_key_value LoRA exports as q/k/v sharing lora_A; PEFT q/k/v adapters
    import only if their lora_A are identical (then the fused rows are exact; a missing one is 0);
  - GPT-2's separate dense1..3 LoRAs export as one block-diagonal c_attn LoRA of rank k·r
    (k adapted thirds) with lora_alpha k·alpha, so the scaling alpha/r is unchanged;
  - prompt-learning methods save the encoder OUTPUT (as PEFT does): an MLP/LSTM/projection
    cannot be rebuilt from it, so such files import as prompt_tuning or ptuning2 without
    projection. PEFT numbers real tokens after a prefix (positions P..), MindFormers and petrun
    from 0: for RoPE models (Llama2, ChatGLM2) prefix keys are stored rotated by R(P), which
    gives exactly petrun's logits in PEFT (_prefix_as_peft_cache); GPT-2's learned positions
    cannot be shifted back, so its prefix methods are refused both ways.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from petrun.ckpt import stream
from petrun.ckpt.hf import ModuleLink, module_links
from petrun.ckpt.io import refuse_existing
from petrun.ckpt.load import checkpoint_files
from petrun.errors import UserError
from petrun.pet.config import method, methods

LAYER_PREFIX = "base_model.model."
PROMPT_KEY = "prompt_embeddings"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


# ---------------------------------------------------------------------------------------------
# Layer maps: petrun layer <-> HF module(s), read off ckpt/hf.py's weight rules (one name map)


def layer_maps(family: str, mc) -> dict[str, ModuleLink]:
    """{petrun layer: ModuleLink}: the module links of ckpt/hf.py's conversion rules, so PEFT key
    names and checkpoint conversion cannot disagree."""
    return module_links(family, mc)


def _lookup(maps: dict[str, ModuleLink], layer: str) -> tuple[ModuleLink, list[str]]:
    m = maps.get(layer)
    if m is None:
        raise UserError(f"layer {layer} has no counterpart in the transformers model PEFT adapts",
                        key="model.model_config.pet_config.target_modules",
                        fix="adapt only layers petrun/ckpt/hf.py maps to transformers (the "
                            "attention and MLP projections)")
    return m, list(m.hf)


def _short_names(family: str, mc, hf_modules: list[str]) -> list[str]:
    """target_modules for PEFT: the shortest unambiguous suffix of each module kind when every
    layer has it, else the full module paths (PEFT matches names by suffix)."""
    kinds: dict[str, set] = {}   # "model.layers.{}.self_attn.q_proj" -> every layer's module
    for m in layer_maps(family, mc).values():
        for h in m.hf:
            kinds.setdefault(re.sub(r"\.\d+\.", ".{}.", h), set()).add(h)
    templates = sorted(kinds)
    out, chosen = [], set(hf_modules)
    for t in templates:
        have = kinds[t] & chosen
        if not have:
            continue
        parts = t.split(".")
        suffix = parts[-1]
        if sum(1 for u in templates if u.split(".")[-1] == suffix) > 1:
            suffix = ".".join(parts[-2:])
        out += [suffix] if have == kinds[t] else sorted(have)
    return out


# ---------------------------------------------------------------------------------------------
# The petrun side: model skeleton and adapter tensors


@dataclass
class PetSide:
    cfg: object               # petrun Config
    family: str
    mc: object                # typed model config
    pet: object               # typed pet config
    model: object             # the PET model built without weights (names, shapes, encoders)
    expected: dict            # adapter name -> shape

    @property
    def pet_type(self) -> str:
        return self.pet.pet_type


def pet_side(config) -> PetSide:
    """The petrun config's PET model, built without allocating weights (seconds for a 7B)."""
    from mindspore.nn.utils import no_init_parameters

    from petrun.build import build_model
    from petrun.config import Config, load_config
    from petrun.models.registry import build_config, family_of_arch
    from petrun.pet import parse_pet_config

    cfg = config if isinstance(config, Config) else load_config(str(config))
    raw = cfg.get("model.model_config.pet_config")
    if not raw:
        raise UserError("the config has no pet_config, so there is no adapter to convert",
                        file=cfg.source, key="model.model_config.pet_config",
                        fix="pass the YAML the adapter was trained with")
    arch = cfg.get("model.arch.type")
    family = family_of_arch(arch)
    if family is None:
        raise UserError(f"PEFT conversion does not know model.arch.type {arch!r}",
                        file=cfg.source, key="model.arch.type")
    with no_init_parameters():
        model = build_model(cfg, device_target="CPU")
    expected = {p.name: tuple(int(d) for d in p.shape) for p in model.get_parameters()
                if "mindpet_delta_" in p.name}
    return PetSide(cfg, family, build_config(cfg.get("model")), parse_pet_config(raw), model,
                   expected)


def read_adapter(side: PetSide, path: str | Path) -> dict[str, np.ndarray]:
    """A petrun adapter as float32 arrays, strictly: exactly the model's adapter tensors. `path`
    is a .ckpt or a folder, resolved as predict/eval resolve --adapter (checkpoint_files)."""
    arrays = {}
    for f in checkpoint_files(path, "--adapter"):
        with stream.CkptReader(f, key="--adapter") as reader:
            arrays.update({n: stream.cast(reader.read(n), i.dtype, "float32")[0]
                           for n, i in reader.infos.items() if "mindpet_delta_" in n})
    _check_names(arrays, side.expected, str(path), "--adapter",
                 "the adapter checkpoint", "pass the adapter trained with this config")
    return arrays


def _check_names(got: dict, want: dict, where: str, key: str, what: str, fix: str) -> None:
    missing = sorted(set(want) - set(got))
    unused = sorted(set(got) - set(want))
    bad = [(n, tuple(got[n].shape), want[n]) for n in sorted(set(got) & set(want))
           if tuple(got[n].shape) != tuple(want[n])]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) the model needs are missing: {_listing(missing)}")
    if unused:
        parts.append(f"{len(unused)} tensor(s) match nothing in the model: {_listing(unused)}")
    if bad:
        n, g, w = bad[0]
        parts.append(f"{n} has shape {g}, the model needs {w}"
                     + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    if parts:
        raise UserError(f"{what} does not fit the model: " + "; ".join(parts), file=where,
                        key=key, fix=fix)


def _listing(names, n: int = 4) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" (and {len(names) - n} more)" if len(names) > n else "")


def _layers(arrays: dict, suffix: str) -> dict[str, np.ndarray]:
    """{layer path: array} for adapter tensors named `<layer>.<suffix>`."""
    tail = "." + suffix
    return {n[:-len(tail)]: a for n, a in arrays.items() if n.endswith(tail)}


def encoder_output(side: PetSide, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The prompt-learning encoder's output [P, width] computed by petrun's own encoder cell."""
    from mindspore import Tensor

    encoder = side.model.encoder
    for p in encoder.get_parameters():
        p.set_data(Tensor(arrays[p.name].astype(np.float32), p.dtype))
    encoder.set_train(False)
    return encoder.output().asnumpy().astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Export


def _export_lora(side: PetSide, arrays: dict) -> tuple[dict, dict]:
    maps = layer_maps(side.family, side.mc)
    a_by, b_by = _layers(arrays, "mindpet_delta_lora_a"), _layers(arrays, "mindpet_delta_lora_b")
    tensors, ranks, fused = {}, {}, {}
    for layer in a_by:
        m, hf = _lookup(maps, layer)
        a, b = a_by[layer], b_by[layer]
        if m.kind == "same":
            tensors[hf[0]] = (a, b)
        elif m.kind == "split":
            start = 0
            for name, rows in zip(hf, m.rows):
                tensors[name] = (a, b[start:start + rows])
                start += rows
        else:
            fused.setdefault(hf[0], {})[m.part] = (a, b)
    r, alpha = int(side.pet.lora_rank), float(side.pet.lora_alpha)
    for name, parts in fused.items():
        # Block-diagonal: part j's B fills rows j of the fused output, columns of its own A rows.
        order = sorted(parts)
        a = np.concatenate([parts[j][0] for j in order], axis=0)
        out = parts[order[0]][1].shape[0]
        b = np.zeros((3 * out, r * len(order)), np.float32)
        for col, j in enumerate(order):
            b[j * out:(j + 1) * out, col * r:(col + 1) * r] = parts[j][1]
        tensors[name] = (a, b)
        ranks[name] = len(order)
    out_tensors = {}
    for name in sorted(tensors):
        out_tensors[f"{LAYER_PREFIX}{name}.lora_A.weight"] = tensors[name][0]
        out_tensors[f"{LAYER_PREFIX}{name}.lora_B.weight"] = tensors[name][1]
    factors = set(ranks.values()) | ({1} if len(ranks) < len(tensors) else set())
    rank_pattern, alpha_pattern = {}, {}
    if len(factors) == 1:
        k = factors.pop()
        base_r, base_alpha = r * k, alpha * k
    else:
        base_r, base_alpha = r, alpha
        for name, k in ranks.items():
            rank_pattern[name] = r * k
            alpha_pattern[name] = alpha * k
    conv1d = side.family == "gpt2"   # HF GPT-2's Conv1D layers store [in, out]
    config = {"peft_type": _peft_type(side), "r": base_r, "lora_alpha": _number(base_alpha),
              "lora_dropout": float(side.pet.lora_dropout),
              "target_modules": _short_names(side.family, side.mc, list(tensors)),
              "fan_in_fan_out": conv1d, "bias": "none", "use_rslora": False, "use_dora": False,
              "init_lora_weights": True, "rank_pattern": rank_pattern,
              "alpha_pattern": {k: _number(v) for k, v in alpha_pattern.items()},
              "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None}
    return out_tensors, config


def _peft_type(side: PetSide) -> str:
    """PEFT's name for the method: its PET-method registry entry (petrun/pet/config.py)."""
    return method(side.pet_type).peft_type


def _number(x: float):
    return int(x) if float(x).is_integer() else float(x)


def _export_ia3(side: PetSide, arrays: dict) -> tuple[dict, dict]:
    maps = layer_maps(side.family, side.mc)
    vecs = _layers(arrays, "mindpet_delta_ia3_l")
    tensors, ff, fused = {}, set(), {}
    for layer, v in vecs.items():
        m, hf = _lookup(maps, layer)
        is_ff = v.shape[0] == 1
        if m.kind == "same":
            tensors[hf[0]] = v
            if is_ff:
                ff.add(hf[0])
        elif m.kind == "split":
            # Scaling the fused output rows = scaling each part's rows; a shared input scale
            # is the same vector on each part.
            start = 0
            for name, rows in zip(hf, m.rows):
                tensors[name] = v if is_ff else v[start:start + rows]
                start += rows
                if is_ff:
                    ff.add(name)
        else:
            fused.setdefault(hf[0], {})[m.part] = v
    for name, parts in fused.items():
        kinds = {p.shape[0] == 1 for p in parts.values()}
        if kinds == {True}:
            vals = list(parts.values())
            if len(parts) != 3 or any(not np.array_equal(vals[0], x) for x in vals[1:]):
                raise UserError(f"feed-forward IA3 on GPT-2's separate q/k/v layers maps to one "
                                f"input scale of {name} only if all three share one vector",
                                key="model.model_config.pet_config.feedforward_modules",
                                fix="do not mark dense1/dense2/dense3 as feed-forward")
            tensors[name] = vals[0]
            ff.add(name)
        else:
            out = next(iter(parts.values())).shape[0]
            full = np.ones((3 * out, 1), np.float32)   # an unadapted third scales by 1
            for j, p in parts.items():
                full[j * out:(j + 1) * out] = p
            tensors[name] = full
    out_tensors = {f"{LAYER_PREFIX}{n}.ia3_l": tensors[n] for n in sorted(tensors)}
    conv1d = side.family == "gpt2"
    config = {"peft_type": _peft_type(side), "target_modules": _short_names(side.family, side.mc, list(tensors)),
              "feedforward_modules": _short_names(side.family, side.mc, sorted(ff)),
              "fan_in_fan_out": conv1d, "init_ia3_weights": True, "modules_to_save": None}
    return out_tensors, config


def _prompt_common(side: PetSide, num_tokens: int, token_dim: int, heads: int) -> dict:
    return {"num_virtual_tokens": num_tokens, "token_dim": token_dim,
            "num_transformer_submodules": 1, "num_attention_heads": heads,
            "num_layers": side.mc.num_layers, "modules_to_save": None}


def _export_prompt(side: PetSide, arrays: dict) -> tuple[dict, dict]:
    from petrun.pet.virtual import family_of

    fam = family_of(side.model.pet_model)
    out = encoder_output(side, arrays)
    heads = getattr(side.mc, "num_heads", None) or getattr(side.mc, "num_attention_heads", None)
    if side.pet_type in ("ptuning2", "prefixtuning"):
        out = _prefix_as_peft_cache(side, fam, out)
        config = {"peft_type": _peft_type(side), "prefix_projection": False,
                  "encoder_hidden_size": fam.hidden,
                  **_prompt_common(side, out.shape[0], fam.kv_heads * fam.head_dim, fam.kv_heads)}
    elif side.pet_type == "prompt_tuning":
        config = {"peft_type": _peft_type(side), "prompt_tuning_init": "RANDOM",
                  "prompt_tuning_init_text": None, "tokenizer_name_or_path": None,
                  "tokenizer_kwargs": None, **_prompt_common(side, out.shape[0], fam.hidden, heads)}
    else:
        p = side.pet
        config = {"peft_type": _peft_type(side),
                  "encoder_reparameterization_type": p.encoder_reparameterization_type,
                  "encoder_hidden_size": p.encoder_hidden_size,
                  "encoder_num_layers": p.encoder_num_layers, "encoder_dropout": p.encoder_dropout,
                  **_prompt_common(side, out.shape[0], fam.hidden, heads)}
    return {PROMPT_KEY: out}, config


def _prefix_as_peft_cache(side: PetSide, fam, out: np.ndarray, inverse: bool = False) -> np.ndarray:
    """petrun's prefix [P, W] as the cache PEFT hands the transformers model (`inverse`: PEFT's
    prompt_embeddings back to petrun's prefix, keys rotated by -P).

    PEFT passes the prefix as past_key_values, so transformers numbers the real tokens P, P+1, ...
    (cache positions after the prefix); petrun and MindFormers number them 0, 1, ... and put no
    RoPE on prefix keys. Rotary scores depend on position differences only, so between real tokens
    the shift changes nothing; a prefix key k meets a query rotated by i in petrun and by i+P in
    transformers: storing R(P)·k makes R(i+P)q·R(P)k = R(i)q·k, exactly petrun's score. Values and
    the layout ([layer 0 keys | layer 0 values | ...], heads outer: PEFT's view/permute) are the
    same. GPT-2's learned positions are added to the input, where no prefix can undo the shift.
    """
    if fam.name == "gpt2":
        raise UserError(
            f"a GPT-2 {side.pet_type} adapter has no faithful "
            f"{'petrun' if inverse else 'PEFT'} form: PEFT feeds the prefix "
            "as past_key_values, so transformers' GPT-2 gives the real tokens learned positions "
            f"P, P+1, ... (P = {out.shape[0]}) where petrun and MindFormers use 0, 1, ...; the "
            "logits would differ", key="model.model_config.pet_config.pet_type",
            fix="keep the petrun/MindFormers adapter checkpoint, or use LoRA or IA3 for GPT-2")
    from mindspore import Tensor

    p, layers, kv, d = out.shape[0], fam.num_layers, fam.kv_heads, fam.head_dim
    x = out.reshape(p, layers, 2, kv, d).copy()
    keys = np.ascontiguousarray(x[:, :, 0].transpose(1, 2, 0, 3))   # (L, kv, P, D) as BNSD
    cos, sin, rotate = _rotation_at(side, fam, p)
    rotated = rotate(Tensor(keys), Tensor(cos), Tensor(-sin if inverse else sin)).asnumpy()
    x[:, :, 0] = rotated.transpose(2, 0, 1, 3)
    return x.reshape(p, -1)


def _rotation_at(side: PetSide, fam, position: int):
    """cos, sin (1, 1, 1, rot) of `position` from the model's own tables, and its rotary cell."""
    from petrun.models import glm2, layers

    c = side.model.pet_model.config
    if fam.name == "llama2":
        cos, sin = layers.rope_tables(c.head_dim, position + 1, c.theta, c.extend_method,
                                      c.scaling_factor)
        rotate = layers.ApplyRotary()
    else:
        cos, sin = glm2.glm2_rope_tables(c.head_dim // 2, position + 1,
                                         10000.0 * float(c.rope_ratio))
        rotate = glm2.InterleavedRotary()
    return (cos[position].reshape(1, 1, 1, -1).astype(np.float32),
            sin[position].reshape(1, 1, 1, -1).astype(np.float32), rotate)


_EXPORTERS: dict[str, Callable] = {"lora": _export_lora, "ia3": _export_ia3,
                                   "prompt_tuning": _export_prompt, "ptuning": _export_prompt,
                                   "ptuning2": _export_prompt, "prefixtuning": _export_prompt}


@dataclass
class ExportResult:
    dst: Path
    peft_type: str
    tensors: int
    notes: list[str]


def export_peft(config, adapter: str | Path, dst: str | Path,
                base_model_name_or_path: str | None = None) -> ExportResult:
    """Write dst/adapter_config.json and dst/adapter_model.safetensors for a petrun adapter."""
    side = pet_side(config)
    if side.pet_type not in _EXPORTERS:
        raise UserError(f"pet_type {side.pet_type!r} has no PEFT format (PEFT has no bottleneck "
                        "adapters)", key="model.model_config.pet_config.pet_type",
                        fix="keep it as a petrun/MindFormers adapter checkpoint")
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise UserError("export-peft writes a folder, and this path is a file", file=str(dst),
                        key="--dst", fix="name a folder")
    arrays = read_adapter(side, adapter)
    tensors, body = _EXPORTERS[side.pet_type](side, arrays)
    config_json = {"task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
                   "revision": None, "inference_mode": True, "auto_mapping": None, **body}
    notes = []
    if side.pet_type in ("ptuning2", "prefixtuning"):
        notes.append("prefix keys are stored rotated by position P: PEFT numbers the real tokens "
                     "after the prefix, petrun from 0 (same logits; see _prefix_as_peft_cache)")
    if side.pet_type in ("ptuning", "prefixtuning") or getattr(side.pet, "prefix_projection", False):
        notes.append("PEFT keeps the encoder's output only: continue training in PEFT as prompt "
                     "embeddings, or keep the petrun checkpoint to train the encoder further")
    layout = [(n, stream.TensorInfo("float32", tuple(a.shape))) for n, a in tensors.items()]
    writer = stream.SafetensorsWriter(dst / WEIGHTS_FILE, layout,
                                      metadata={"format": "pt", "petrun_pet_type": side.pet_type})
    try:
        for n, a in tensors.items():
            writer.write(n, np.ascontiguousarray(a, np.float32), "float32")
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    cfg_file = stream.AtomicFile(dst / CONFIG_FILE)
    cfg_file.f.write((json.dumps(config_json, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    cfg_file.commit()
    return ExportResult(dst, config_json["peft_type"], len(tensors), notes)


# ---------------------------------------------------------------------------------------------
# Import


def read_peft(src: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    src = Path(src)
    cfg_path = src / CONFIG_FILE
    weights = src / WEIGHTS_FILE
    if not cfg_path.is_file():
        raise UserError(f"no {CONFIG_FILE} here", file=str(src), key="--src",
                        fix="point --src at the folder PEFT's save_pretrained wrote")
    if not weights.is_file():
        hint = " (adapter_model.bin is a pickle: re-save with safe_serialization=True)" \
            if (src / "adapter_model.bin").is_file() else ""
        raise UserError(f"no {WEIGHTS_FILE} here{hint}", file=str(src), key="--src",
                        fix="save the adapter with PEFT's save_pretrained (safetensors)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"not valid JSON ({e})", file=str(cfg_path), key="--src",
                        fix="repair the file, or re-save the adapter with PEFT's "
                            "save_pretrained") from None
    if not isinstance(config, dict):
        raise UserError(f"holds a JSON {type(config).__name__}, not an object",
                        file=str(cfg_path), key="--src",
                        fix="re-save the adapter with PEFT's save_pretrained")
    with stream.SafetensorsReader(weights) as reader:
        arrays = {n: stream.cast(reader.read(n), i.dtype, "float32")[0]
                  for n, i in reader.infos.items()}
    return config, arrays


def _need(cond: bool, message: str, fix: str, key: str = "model.model_config.pet_config"):
    if not cond:
        raise UserError(message, key=key, fix=fix)


def _peft_modules(arrays: dict, suffixes: tuple[str, ...], where: str) -> dict[str, dict]:
    """{hf module: {suffix: array}} from `base_model.model.<module>.<suffix>` keys."""
    out: dict[str, dict] = {}
    for key, a in arrays.items():
        hit = next((s for s in suffixes if key.endswith("." + s)), None)
        if not key.startswith(LAYER_PREFIX) or hit is None:
            raise UserError(f"unexpected tensor {key} in a {'/'.join(suffixes)} adapter",
                            file=where, key="--src",
                            fix="petrun imports LoRA (lora_A/lora_B), IA3 (ia3_l) and "
                                "prompt_embeddings; modules_to_save and biases are not imported")
        module = key[len(LAYER_PREFIX):-len(hit) - 1]
        out.setdefault(module, {})[hit] = a
    return out


def _import_lora(side: PetSide, config: dict, arrays: dict, where: str) -> dict:
    for flag in ("use_rslora", "use_dora"):
        _need(not config.get(flag), f"the PEFT adapter uses {flag}, which petrun's LoRA has not",
              "train it without that option", key="--src")
    _need(config.get("bias", "none") == "none", "the PEFT adapter trains biases (bias: "
          f"{config.get('bias')!r}); petrun adapts weights only", "use bias: none", key="--src")
    r, alpha = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    want = float(side.pet.lora_alpha) / float(side.pet.lora_rank)
    modules = _peft_modules(arrays, ("lora_A.weight", "lora_B.weight"), where)
    for module, pair in modules.items():
        for half in ("lora_A.weight", "lora_B.weight"):
            if half not in pair:
                raise UserError(f"{LAYER_PREFIX}{module}.{half} is missing (its other half is "
                                "there)", file=where, key="--src",
                                fix="re-save the adapter with PEFT's save_pretrained")
    parts: dict[str, set] = {}
    for module in modules:
        key = next((k for k in ranks if re.match(rf"(.*\.)?({k})$", module)), None)
        mr = int(ranks[key]) if key else r
        akey = next((k for k in alphas if re.match(rf"(.*\.)?({k})$", module)), None)
        ma = float(alphas[akey]) if akey else alpha
        _need(abs(ma / mr - want) <= 1e-9 * max(1.0, want),
              f"{module}: PEFT's scaling lora_alpha/r = {ma:g}/{mr} = {ma / mr:g}, petrun's "
              f"pet_config gives {side.pet.lora_alpha}/{side.pet.lora_rank} = {want:g}",
              f"set lora_rank: {r} and lora_alpha: {_number(alpha)} in pet_config")
    maps = layer_maps(side.family, side.mc)
    out, used = {}, set()
    for layer in sorted({n.rsplit(".", 1)[0] for n in side.expected}):
        m, hf = _lookup(maps, layer)
        name_a, name_b = f"{layer}.mindpet_delta_lora_a", f"{layer}.mindpet_delta_lora_b"
        if m.kind == "same":
            if hf[0] in modules:
                out[name_a], out[name_b] = modules[hf[0]]["lora_A.weight"], modules[hf[0]]["lora_B.weight"]
                used.add(hf[0])
        elif m.kind == "split":
            present = [h for h in hf if h in modules]
            if present:
                a0 = modules[present[0]]["lora_A.weight"]
                same = all(np.array_equal(modules[h]["lora_A.weight"], a0) for h in present)
                _need(same, f"PEFT adapted {', '.join(present)} with different lora_A; petrun's "
                            f"ChatGLM2 fuses them in {layer} and cannot hold that exactly",
                      "train the PEFT adapter with petrun's fused layout, or use LoRA in petrun",
                      key="--src")
                rows = [modules[h]["lora_B.weight"] if h in modules else
                        np.zeros((n, a0.shape[0]), np.float32) for h, n in zip(hf, m.rows)]
                out[name_a], out[name_b] = a0, np.concatenate(rows, axis=0)
                used.update(present)
        else:
            if hf[0] in modules:
                a, b = modules[hf[0]]["lora_A.weight"], modules[hf[0]]["lora_B.weight"]
                third = b.shape[0] // 3
                a, b = _lora_block(a, b[m.part * third:(m.part + 1) * third], m.part,
                                   _parts_targeted(side, maps, hf[0]), int(side.pet.lora_rank),
                                   hf[0], where)
                out[name_a], out[name_b] = a, b
                used.add(hf[0])
                parts.setdefault(hf[0], set()).add(m.part)
    for module, taken in parts.items():
        b = modules[module]["lora_B.weight"]
        _check_dropped_thirds(module, b, taken, 0.0, where)
    _check_unused(modules, used, side, where)
    return out


def _parts_targeted(side: PetSide, maps: dict[str, ModuleLink], module: str) -> list[int]:
    """Which thirds of the fused HF `module` the petrun config adapts, in order."""
    out = []
    for name in side.expected:
        m = maps.get(name.rsplit(".", 1)[0])
        if m is not None and m.kind == "part" and m.hf[0] == module:
            out.append(m.part)
    return sorted(set(out))


def _lora_block(a: np.ndarray, b: np.ndarray, part: int, order: list[int], rank: int,
                module: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) of one third of a fused LoRA for a petrun layer of rank `rank`. A fused LoRA of
    rank k·rank (as export writes it) must be block-diagonal: third j uses only its own block of
    A's rows; taking that block is then exact."""
    if a.shape[0] == rank:
        return a, b
    if a.shape[0] % rank or a.shape[0] // rank != len(order):
        return a, b   # the shape check names the mismatch
    block = order.index(part)
    cols = slice(block * rank, (block + 1) * rank)
    outside = np.delete(b, np.arange(a.shape[0])[cols], axis=1)
    if outside.any():
        raise UserError(f"{module} is a rank-{a.shape[0]} LoRA whose thirds share rank "
                        f"dimensions; petrun's separate layers of rank {rank} cannot hold it",
                        file=where, key=f"{_pet_key()}.lora_rank",
                        fix=f"set lora_rank: {a.shape[0]} (and scale lora_alpha alike)")
    return a[cols], b[:, cols]


def _check_dropped_thirds(module: str, array: np.ndarray, taken: set, identity: float,
                          where: str) -> None:
    """A fused module's third that no petrun layer takes must be the identity (LoRA B rows 0,
    IA3 scale 1), or importing would silently change the model."""
    third = array.shape[0] // 3
    names = ("query (dense1)", "key (dense2)", "value (dense3)")
    for j in sorted(set(range(3)) - taken):
        if not np.all(array[j * third:(j + 1) * third] == identity):
            raise UserError(f"{module} adapts the {names[j]} third, which the pet_config's "
                            "target_modules leave out", file=where, key=f"{_pet_key()}.target_modules",
                            fix="target '.*dense1|.*dense2|.*dense3' to import a fused c_attn "
                                "adapter")


def _check_unused(modules: dict, used: set, side: PetSide, where: str) -> None:
    unused = sorted(set(modules) - used)
    if unused:
        raise UserError(f"{len(unused)} PEFT module(s) are adapted but the pet_config does not "
                        f"target them: {_listing(unused)}", file=where, key=f"{_pet_key()}.target_modules",
                        fix="widen target_modules so petrun adapts the same layers")


def _pet_key() -> str:
    return "model.model_config.pet_config"


def _import_ia3(side: PetSide, config: dict, arrays: dict, where: str) -> dict:
    maps = layer_maps(side.family, side.mc)
    modules = _peft_modules(arrays, ("ia3_l",), where)
    out, used, parts = {}, set(), {}
    for layer in sorted({n.rsplit(".", 1)[0] for n in side.expected}):
        m, hf = _lookup(maps, layer)
        name = f"{layer}.mindpet_delta_ia3_l"
        ff = side.expected[name][0] == 1
        if m.kind == "same":
            if hf[0] in modules:
                out[name] = modules[hf[0]]["ia3_l"]
                used.add(hf[0])
        elif m.kind == "split":
            present = [h for h in hf if h in modules]
            if not present:
                continue
            if ff:
                vals = [modules[h]["ia3_l"] for h in hf if h in modules]
                _need(len(present) == len(hf) and all(np.array_equal(vals[0], v) for v in vals),
                      f"PEFT scales the inputs of {', '.join(hf)} differently; petrun's fused "
                      f"{layer} has one input", "use one feed-forward vector", key="--src")
                out[name] = vals[0]
            else:
                out[name] = np.concatenate(
                    [modules[h]["ia3_l"] if h in modules else np.ones((n, 1), np.float32)
                     for h, n in zip(hf, m.rows)], axis=0)
            used.update(present)
        else:
            if hf[0] in modules:
                v = modules[hf[0]]["ia3_l"]
                if ff:
                    out[name] = v
                else:
                    third = v.shape[0] // 3
                    out[name] = v[m.part * third:(m.part + 1) * third]
                parts.setdefault(hf[0], set()).add(m.part)
                used.add(hf[0])
    for module, taken in parts.items():
        v = modules[module]["ia3_l"]
        if v.shape[0] == 1:   # one input scale for q, k and v: every third must take it
            v = np.repeat(v.reshape(1, -1), 3, axis=0)
        _check_dropped_thirds(module, v, taken, 1.0, where)
    _check_unused(modules, used, side, where)
    return out


def _import_prompt(side: PetSide, config: dict, arrays: dict, where: str) -> dict:
    peft_type = config.get("peft_type")
    _need(set(arrays) == {PROMPT_KEY}, f"a {peft_type} adapter holds one tensor "
          f"'{PROMPT_KEY}', this one holds {_listing(sorted(arrays))}", "re-save it with PEFT",
          key="--src")
    _need(int(config.get("num_transformer_submodules", 1) or 1) == 1,
          "the adapter is for an encoder-decoder model (num_transformer_submodules 2)",
          "use an adapter made for a decoder-only causal LM", key="--src")
    table = arrays[PROMPT_KEY]
    names = list(side.expected)
    prefix = "ptuning2" in _importing(peft_type)   # a key/value prefix, not input embeddings
    if prefix:
        _need(side.pet_type == "ptuning2" and not side.pet.prefix_projection,
              "PEFT saves a prefix as its final key/values (prompt_embeddings); no encoder MLP "
              "can be rebuilt from that",
              f"import with pet_config {{pet_type: ptuning2, pre_seq_len: {table.shape[0]}, "
              "prefix_projection: False}")
    else:
        _need(side.pet_type == "prompt_tuning",
              f"PEFT's {peft_type} file holds the prompt embeddings only (a P-tuning encoder's "
              "output); petrun loads them as prompt tuning",
              f"import with pet_config {{pet_type: prompt_tuning, num_virtual_tokens: "
              f"{table.shape[0]}}}")
    if prefix:
        from petrun.pet.virtual import family_of

        table = _prefix_as_peft_cache(side, family_of(side.model.pet_model), table, inverse=True)
    (name,) = [n for n in names if n.endswith("embedding.embedding_table")]
    return {name: table}


# Per petrun method that PEFT adapters import as; which PEFT types each takes is its registry
# entry's peft_imports (P_TUNING → prompt_tuning, PREFIX_TUNING → ptuning2).
_IMPORTERS: dict[str, Callable] = {"lora": _import_lora, "ia3": _import_ia3,
                                   "prompt_tuning": _import_prompt, "ptuning2": _import_prompt}


def _importing(peft_type) -> list[str]:
    """The petrun methods a PEFT adapter of `peft_type` imports as."""
    return [m.pet_type for m in methods()
            if peft_type in m.peft_imports and m.pet_type in _IMPORTERS]


@dataclass
class ImportResult:
    dst: Path
    peft_type: str
    tensors: int


def import_peft(config, src: str | Path, dst: str | Path, overwrite: bool = False) -> ImportResult:
    """A PEFT adapter folder → a petrun adapter-only .ckpt for `config`'s model, strictly."""
    dst = Path(dst)
    if dst.suffix != ".ckpt":
        raise UserError("the output must be a .ckpt file", file=str(dst), key="--dst",
                        fix=f"e.g. --dst {dst.with_suffix('.ckpt').name}")
    refuse_existing(dst, overwrite)
    peft_config, arrays = read_peft(src)
    peft_type = peft_config.get("peft_type")
    targets = _importing(peft_type)
    if not targets:
        known = sorted({t for m in methods() if m.pet_type in _IMPORTERS for t in m.peft_imports})
        raise UserError(f"petrun cannot import PEFT type {peft_type!r}", file=str(src),
                        key="--src", fix=f"supported: {', '.join(known)}")
    side = pet_side(config)
    importer = _IMPORTERS[targets[0]]
    # The prompt importer names the pet_config to use, with the adapter's length.
    if side.pet_type not in targets and importer is not _import_prompt:
        raise UserError(f"the adapter is {peft_type} but the config's pet_type is "
                        f"{side.pet_type!r}", file=side.cfg.source, key=f"{_pet_key()}.pet_type",
                        fix=f"use a config with pet_type {targets[0]}")
    where = str(Path(src) / WEIGHTS_FILE)
    tensors = importer(side, peft_config, arrays, where)
    _check_names(tensors, side.expected, where, "--src", "the PEFT adapter",
                 "make pet_config (target_modules, rank, num_virtual_tokens) match the adapter")
    writer = stream.CkptWriter(dst)
    try:
        for name in side.expected:
            writer.write(name, np.ascontiguousarray(tensors[name], np.float32), "float32")
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return ImportResult(dst, peft_type, len(tensors))
