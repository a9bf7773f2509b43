"""`petrun export`: a petrun model (base + adapter, or a full finetune) → one folder transformers
loads as it is.

    export_model("configs/llama2/lora_llama2_tiny.yaml", "hf_out/", adapter="output/checkpoint/rank_0")

--format hf (default): the adapter folded into the base weights (ckpt/merge.py's streaming rule)
and renamed to transformers' layout (ckpt/hf.py's rules) tensor by tensor, written as
model.safetensors — or shards + model.safetensors.index.json above `max_shard_size` — with
config.json, generation_config.json and the tokenizer files with petrun's chat template
(data/hf_tokenizer.py). --format peft: the adapter alone in PEFT's format (ckpt/peft_format.py)
with the base's config.json and the tokenizer files, for PeftModel.from_pretrained on the
--format hf export of the base.

Everything is written into a hidden folder beside the output and renamed into place at the end:
a crash leaves the old output (or none), never half a folder.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from petrun.atomic import atomic_file, fsync_dir
from petrun.ckpt import hf, stream
from petrun.ckpt.io import is_training_state
from petrun.ckpt.load import checkpoint_files
from petrun.ckpt.shards import ShardedSafetensorsWriter, parse_size
from petrun.errors import UserError

FORMATS = ("hf", "peft")
DEFAULT_SHARD = "5GB"   # transformers' save_pretrained default


@dataclass
class ExportResult:
    output: Path
    format: str
    files: list[str]
    tensors: int = 0
    shards: int = 0
    pet_type: str | None = None      # the adapter folded in (hf) or written (peft)
    merged_layers: int = 0
    template: str | None = None      # petrun's chat template in tokenizer_config.json
    notes: list[str] = field(default_factory=list)


class _MergedReader(stream.TensorReader):
    """The base checkpoint's network tensors with the adapter folded in as they are read."""

    def __init__(self, reader: stream.CkptReader, plan: dict[str, Callable]):
        self._reader, self._plan = reader, plan
        self.infos = {n: i for n, i in reader.infos.items() if not is_training_state(n)}

    def read(self, name: str) -> np.ndarray:
        array = self._reader.read(name)
        if name not in self._plan:
            return array
        dtype = self.infos[name].dtype
        merged = self._plan[name](stream.cast(array, dtype, "float32")[0])
        return stream.cast(np.asarray(merged, np.float32), "float32", dtype)[0]


def _config(config):
    from petrun.build import as_config
    from petrun.models.registry import build_config, family_of_arch

    cfg = as_config(config)
    arch = cfg.get("model.arch.type")
    family = family_of_arch(arch)
    if family is None:
        raise UserError(f"export does not know model.arch.type {arch!r}", file=cfg.source,
                        key="model.arch.type", fix="export a llama2, glm2 or gpt2 model")
    mc = build_config(cfg.get("model"))
    if family == "glm2":
        hf.check_glm2_for_hf(mc)
    return cfg, family, mc


def _weights(cfg, checkpoint) -> Path:
    path, key = (checkpoint, "--checkpoint") if checkpoint else \
        (cfg.get("load_checkpoint"), "load_checkpoint")
    if not path:
        raise UserError("no weights to export: the config has no load_checkpoint",
                        file=cfg.source, key="load_checkpoint",
                        fix="pass --checkpoint BASE.ckpt (the base weights, or a full finetune's "
                            "checkpoint)")
    files = checkpoint_files(path, key)
    if len(files) != 1:
        raise UserError(f"{key} denotes {len(files)} checkpoint files; export reads one file of "
                        "complete weights", file=str(path), key=key,
                        fix="merge a distributed checkpoint first (petrun ckpt transform), or "
                            "name the one .ckpt file")
    return files[0]


def _tokenizer_cfg(cfg, tokenizer: str | None) -> dict:
    from petrun.data.tokenizer import tokenizer_config_for_path

    tok_cfg = dict(cfg.get("processor.tokenizer") or {})
    if tokenizer:
        given = tokenizer_config_for_path(tokenizer, tok_cfg.get("type"))
        keep = {k: v for k, v in tok_cfg.items()
                if k not in ("vocab_file", "merges_file", "tokenizer_file")}
        tok_cfg = {**keep, **given}
    if not (tok_cfg.get("vocab_file") or tok_cfg.get("tokenizer_file")):
        raise UserError("the config names no tokenizer file, and transformers needs one in the "
                        "folder", file=cfg.source, key="processor.tokenizer.vocab_file",
                        fix="pass --tokenizer PATH (tokenizer.model, tokenizer.json or "
                            "vocab.json with merges.txt beside it)")
    return tok_cfg


def _template(cfg, tok_cfg: dict, adapter, checkpoint) -> str:
    """The template the model speaks (infer/chat.py:model_template, as predict and chat pick
    it): configured, else recorded by the run that trained the adapter or the weights."""
    from petrun.infer.chat import model_template

    return model_template(cfg, adapter=adapter or checkpoint, tokenizer=tok_cfg)[0]


def _check_output(output: Path, overwrite: bool, inputs: list[Path]) -> None:
    if output.exists() and not output.is_dir():
        raise UserError("export writes a folder, and this path is a file", file=str(output),
                        key="--output", fix="name a new folder")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise UserError("the output folder exists and is not empty", file=str(output),
                            key="--output", fix="pass --overwrite to replace it, or choose "
                                                "another --output")
        resolved = output.resolve()
        for p in inputs:
            if p is not None and (resolved == p.resolve() or resolved in p.resolve().parents):
                raise UserError("--output would replace an input of the export",
                                file=str(output), key="--output", fix="write to a new folder")


def _write_json(path: Path, data: dict) -> None:
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2) + "\n")


def generation_config(mc) -> dict:
    """transformers' generation_config.json from the model config's decoding defaults (what
    petrun predict uses when no flag is given)."""
    out = {"bos_token_id": getattr(mc, "bos_token_id", None),
           "eos_token_id": getattr(mc, "eos_token_id", None),
           "pad_token_id": getattr(mc, "pad_token_id", None),
           "do_sample": bool(mc.do_sample), "max_length": int(mc.max_decode_length)}
    if mc.do_sample:
        out.update(top_k=int(mc.top_k), top_p=float(mc.top_p))
    if float(mc.repetition_penalty) != 1.0:
        out["repetition_penalty"] = float(mc.repetition_penalty)
    return {k: v for k, v in out.items() if v is not None}


def _merge_plan(cfg, adapter) -> tuple[dict, str, int]:
    """({base tensor: fold rule}, pet type, adapter layers) for `adapter`, refusing methods that
    cannot be folded into weights before reading anything large."""
    from petrun.ckpt.merge import merge_plan
    from petrun.ckpt.peft_format import pet_side, read_adapter
    from petrun.pet.merge import MERGEABLE

    pet = cfg.get("model.model_config.pet_config")
    if not pet:
        raise UserError("--adapter needs the config the adapter was trained with, and this one "
                        "has no pet_config", file=cfg.source, key="model.model_config.pet_config",
                        fix="pass the training YAML (its pet_config gives the merge's scaling)")
    pet_type = pet.get("pet_type") if hasattr(pet, "get") else None
    if pet_type not in MERGEABLE:
        raise UserError(f"a {pet_type} adapter cannot be folded into the weights (it adds virtual "
                        "tokens, attention slots or a non-linear bottleneck)", file=cfg.source,
                        key="model.model_config.pet_config.pet_type",
                        fix="export it with --format peft (PEFT loads it next to the base "
                            f"model), or use {' or '.join(MERGEABLE)}")
    side = pet_side(cfg)
    plan = merge_plan(side, read_adapter(side, adapter))
    return plan, side.pet_type, len(plan)


def _export_hf(cfg, family, mc, weights: Path, adapter, folder: Path, max_bytes: int,
               dtype: str | None, progress, on_plan) -> ExportResult:
    plan, pet_type, layers = ({}, None, 0) if adapter is None else _merge_plan(cfg, adapter)
    result = ExportResult(folder, "hf", [], pet_type=pet_type, merged_layers=layers)
    with stream.CkptReader(weights, key="--checkpoint") as reader:
        source = _MergedReader(reader, plan)
        adapters = [n for n in source.infos if "mindpet_delta_" in n]
        if adapters:
            raise UserError(f"the weights hold adapter tensors ({', '.join(adapters[:3])})",
                            file=str(weights), key="--checkpoint",
                            fix="pass the base weights as --checkpoint and the adapter as "
                                "--adapter")
        absent = sorted(set(plan) - set(source.infos))
        if absent:
            raise UserError(f"the base weights lack {len(absent)} tensor(s) the adapter changes, "
                            f"e.g. {', '.join(absent[:3])}", file=str(weights), key="--checkpoint",
                            fix="pass the base checkpoint of this config's model")
        rules, drop = hf.ms_rules(family, mc)
        hf_plan = hf.make_plan(rules, drop, source.infos, str(weights), key="--checkpoint")
        if on_plan is not None:
            on_plan(hf_plan)
        layout = hf_plan.layout(dtype)
        out_dtype = dtype or (layout[0][1].dtype if layout else "float32")
        writer = ShardedSafetensorsWriter(folder, layout, max_bytes, metadata={"format": "pt"})
        try:
            hf.execute(hf_plan, source, writer, dtype, progress)
            written = writer.commit()
        except BaseException:
            writer.abort()
            raise
    result.files += [p.name for p in written]
    result.tensors, result.shards = hf_plan.num_tensors, len(writer.shards)
    _write_json(folder / "config.json", hf.hf_config_dict(family, mc, out_dtype))
    _write_json(folder / "generation_config.json", generation_config(mc))
    result.files += ["config.json", "generation_config.json"]
    return result


def _export_peft(cfg, family, mc, adapter, folder: Path, base_model: str | None) -> ExportResult:
    from petrun.ckpt.peft_format import export_peft

    if adapter is None:
        raise UserError("--format peft writes an adapter, and no --adapter was given",
                        key="--adapter", fix="pass --adapter (a run's checkpoint/rank_0 folder "
                                             "or adapter .ckpt), or use --format hf")
    done = export_peft(cfg, adapter, folder, base_model)
    dtype = mc.param_init_type if getattr(mc, "param_init_type", None) else "float32"
    _write_json(folder / "config.json", hf.hf_config_dict(family, mc, str(dtype)))
    files = [p.name for p in sorted(folder.iterdir())]
    return ExportResult(folder, "peft", files, tensors=done.tensors, pet_type=done.peft_type,
                        notes=list(done.notes))


def export_model(config, output: str | Path, *, adapter: str | Path | None = None,
                 checkpoint: str | Path | None = None, fmt: str = "hf",
                 max_shard_size: int | str = DEFAULT_SHARD, dtype: str | None = None,
                 tokenizer: str | None = None, overwrite: bool = False,
                 base_model: str | None = None,
                 progress: Callable[[str], None] | None = None,
                 on_plan: Callable | None = None) -> ExportResult:
    """Write the export folder `output` (see the module docstring). `checkpoint` overrides the
    config's load_checkpoint (the base weights; with no adapter, a full finetune's weights);
    `tokenizer` overrides processor.tokenizer's file."""
    from petrun.data.hf_tokenizer import write_hf_tokenizer

    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}", key="--format",
                        fix="use --format hf (merged weights) or --format peft (the adapter)")
    max_bytes = parse_size(max_shard_size)
    dtype = hf.canonical_dtype(dtype)
    output = Path(output)
    cfg, family, mc = _config(config)
    named = cfg.get("processor.tokenizer") or {}
    tok_cfg = _tokenizer_cfg(cfg, tokenizer) if fmt == "hf" or tokenizer or \
        named.get("vocab_file") or named.get("tokenizer_file") else None
    weights = _weights(cfg, checkpoint) if fmt == "hf" else None
    _check_output(output, overwrite, [weights, Path(adapter) if adapter else None])
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if fmt == "hf":
            result = _export_hf(cfg, family, mc, weights, adapter, tmp, max_bytes, dtype,
                                progress, on_plan)
        else:
            result = _export_peft(cfg, family, mc, adapter, tmp, base_model)
        if tok_cfg is not None:
            seq = getattr(mc, "seq_length", None)
            tok = write_hf_tokenizer(tok_cfg, tmp, template=_template(cfg, tok_cfg, adapter, checkpoint),
                                     model_max_length=seq)
            result.files += [f for f in tok.files if f not in result.files]
            result.template = tok.template
        _replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.output = output
    return result


def _replace(tmp: Path, output: Path) -> None:
    """Rename the finished folder into place; an existing output (only with --overwrite) is
    moved aside first and removed after, so a crash between leaves one complete folder."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
    os.replace(tmp, output)
    fsync_dir(output.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
