"""The local model store: MindFormers model names (`gpt2`, `glm2_6b`, ...) resolved without a
download.

MindFormers resolves a model-book name by downloading its checkpoint and tokenizer. petrun never
downloads; `petrun models add NAME --from HF_FOLDER|CKPT` puts them in a folder of its own:

    $PETRUN_MODEL_STORE/<name>/            (default ~/.cache/petrun/models, or $XDG_CACHE_HOME/…)
        entry.json      petrun.model/1: name, family, arch, parameter count, source, file list
        model.yaml      the model as a petrun YAML: model (arch + model_config), processor
                        (tokenizer), load_checkpoint (the two paths below, absolute when written)
        model.ckpt      the weights, MindSpore format, MindFormers' names
        tokenizer/      the tokenizer files (tokenizer.model, or vocab.json + merges.txt, or
                        tokenizer.json), if any

An entry is assembled in a hidden temporary folder beside it and renamed into place, so a failed
or interrupted `add` leaves no entry (and `--overwrite` swaps the old one out only at the end).
Readers take the paths from the entry's folder, not from model.yaml, so a moved store still works.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from petrun.errors import UserError
from petrun.models.registry import arch_families, family_of_arch
from petrun.store import hf_config

ENV = "PETRUN_MODEL_STORE"
FORMAT = "petrun.model/1"
ENTRY, CONFIG, WEIGHTS, TOKENIZER_DIR = "entry.json", "model.yaml", "model.ckpt", "tokenizer"
_TMP_PREFIX = ".tmp-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# MindFormers' model book (r1.0–r1.3) for the three families: name → family. Names of other
# families (glm3_6b, qwen_7b, ...) are refused by family, not by spelling.
BOOK = {"gpt2": "gpt2", "gpt2_xl": "gpt2", "gpt2_13b": "gpt2", "gpt2_52b": "gpt2",
        "llama2_7b": "llama2", "llama2_13b": "llama2", "llama2_70b": "llama2",
        "glm2_6b": "glm2"}
FAMILIES = ("llama2", "glm2", "gpt2")
TOKENIZER_TYPE = {"llama2": "LlamaTokenizer", "glm2": "ChatGLM2Tokenizer", "gpt2": "GPT2Tokenizer"}
# What a tokenizer is made of, by the file that identifies it.
_TOKENIZER_SETS = (("tokenizer.model",), ("vocab.json", "merges.txt"), ("tokenizer.json",))


def root() -> Path:
    if os.environ.get(ENV):
        return Path(os.path.expanduser(os.environ[ENV]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "petrun" / "models"


def add_command(name: str) -> str:
    return f"petrun models add {name} --from <Hugging Face folder or .ckpt>"


@dataclass
class Entry:
    name: str
    path: Path
    meta: dict

    @property
    def family(self) -> str:
        return self.meta["family"]

    @property
    def checkpoint(self) -> Path:
        return self.path / WEIGHTS

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def params(self) -> int:
        return int(self.meta.get("params", 0))

    @property
    def max_positions(self) -> int | None:
        return self.meta.get("max_positions")

    def model_yaml(self) -> dict:
        """model.yaml with its paths re-pointed at this folder (the store may have moved)."""
        import yaml
        data = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
        data["load_checkpoint"] = str(self.checkpoint)
        tok = (data.get("processor") or {}).get("tokenizer") or {}
        for key in ("vocab_file", "merges_file", "tokenizer_file"):
            if tok.get(key):
                tok[key] = str(self.path / TOKENIZER_DIR / Path(tok[key]).name)
        return data


def get(name: str, key: str = "model") -> Entry:
    """The entry for `name`; a UserError with the command that adds it if there is none."""
    folder = root() / name
    if not _NAME.match(name) or not (folder / ENTRY).is_file():
        known = ", ".join(e.name for e in entries()) or "none yet"
        raise UserError(f"model {name!r} is not in the local model store ({root()}; "
                        f"it holds: {known}); petrun never downloads weights", key=key,
                        fix=f"add it once from a local copy: {add_command(name)} "
                            f"(or set {ENV} to the store that has it)")
    try:
        meta = json.loads((folder / ENTRY).read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"the store entry is damaged ({e})", file=str(folder / ENTRY), key=key,
                        fix=f"re-add it: {add_command(name)} --overwrite") from None
    return Entry(name, folder, meta)


def exists(name: str) -> bool:
    return bool(_NAME.match(name)) and (root() / name / ENTRY).is_file()


def entries() -> list[Entry]:
    base = root()
    if not base.is_dir():
        return []
    out = []
    for d in sorted(base.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and (d / ENTRY).is_file():
            try:
                out.append(Entry(d.name, d, json.loads((d / ENTRY).read_text(encoding="utf-8"))))
            except ValueError:
                continue   # a damaged entry is reported by get(), not by a listing
    return out


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}".replace(".0" + unit, unit)
    return str(n)


# --------------------------------------------------------------------------------------- add

def add(name: str, src: str | Path, *, config: str | Path | None = None,
        tokenizer: str | Path | None = None, family: str | None = None, dtype: str | None = None,
        overwrite: bool = False, progress: Callable[[str], None] | None = None,
        on_plan=None) -> Entry:
    """Convert/copy `src` into the store as `name`; returns the new entry.

    src: a Hugging Face folder (config.json + safetensors; converted tensor by tensor) or a
    MindSpore .ckpt with MindFormers' names (then `config`, a petrun YAML, gives the model).
    tokenizer: a file or folder; default: the tokenizer files found in an HF folder.
    """
    if not _NAME.match(name):
        raise UserError(f"{name!r} is not a usable model name", key="NAME",
                        fix="use letters, digits, '_', '.' and '-', e.g. glm2_6b")
    src = Path(os.path.expanduser(str(src)))
    if not src.exists():
        raise UserError("the source does not exist", file=str(src), key="--from",
                        fix="give a Hugging Face model folder or a MindSpore .ckpt file")
    base = root()
    final = base / name
    if (final / ENTRY).is_file() and not overwrite:
        raise UserError(f"model {name!r} is already in the store", file=str(final), key="NAME",
                        fix="pass --overwrite to replace it, or choose another name")
    model, capacity, source_kind = _model_section(name, src, config, family)
    fam = family_of_arch(model["arch"]["type"])
    if fam is None:
        raise UserError(f"model.arch.type {model['arch']['type']!r} is not a Llama2, ChatGLM2 or "
                        "GPT-2 model", file=str(config), key="model.arch.type",
                        fix=f"use one of {', '.join(arch_families())}")
    mc = _typed(model)
    tok_files = _tokenizer_files(src, tokenizer)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        if source_kind == "hf":
            from petrun.ckpt.hf import convert_hf_to_ms
            try:
                convert_hf_to_ms(fam, src, tmp / WEIGHTS, dtype, progress, on_plan)
            except UserError as e:   # its messages name `ckpt convert`'s --src
                if e.key == "--src":
                    e.key = "--from"
                raise
        else:
            if dtype is not None:
                raise UserError("--dtype converts Hugging Face weights; a .ckpt is stored as is",
                                key="--dtype", fix="drop --dtype")
            shutil.copyfile(src, tmp / WEIGHTS)
        params = _check_weights(tmp / WEIGHTS, mc, src)
        tok_cfg = _store_tokenizer(tok_files, tmp, fam, final, mc)
        doc = {"model": model, "load_checkpoint": str(final / WEIGHTS)}
        if tok_cfg:
            doc["processor"] = {"tokenizer": tok_cfg}
        _write_yaml(tmp / CONFIG, name, doc)
        meta = {"format": FORMAT, "name": name, "family": fam, "arch": model["arch"]["type"],
                "params": params, "max_positions": capacity, "source": str(src.resolve()),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "tokenizer": sorted(p.name for p in tok_files)}
        (tmp / ENTRY).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _commit(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return get(name)


def _model_section(name: str, src: Path, config, family: str | None) -> tuple[dict, int | None, str]:
    """(model section, position capacity, "hf" or "ckpt")."""
    if config is not None:
        from petrun.config import load_config
        cfg = load_config(str(config))
        # The base model only: the PET method (and GLM2's P-Tuning v2 arch and pre_seq_len that
        # go with it) is the recipe's business.
        arch = {"ChatGLM2WithPtuning2": "ChatGLM2ForConditionalGeneration"}.get(
            cfg.get("model.arch.type"), cfg.get("model.arch.type"))
        model = {"arch": {"type": arch}, "model_config":
                 {k: v for k, v in dict(cfg.get("model.model_config")).items()
                  if k not in ("pet_config", "pre_seq_len")}}
        capacity = None
    if src.is_dir():
        hf = hf_config.read_hf_config(src)
        if config is None:
            fam = _family(name, hf, family, src)
            model, capacity = hf_config.model_section(fam, hf, str(src / "config.json"))
        return model, capacity, "hf"
    if src.suffix == ".ckpt":
        if config is None:
            raise UserError("a .ckpt does not say which architecture it holds", file=str(src),
                            key="--config", fix="add --config <petrun YAML of the model> (e.g. "
                                                "configs/gpt2/run_gpt2.yaml), or add the Hugging "
                                                "Face folder instead")
        return model, capacity, "ckpt"
    if src.suffix == ".safetensors":
        raise UserError("give the Hugging Face folder, not one of its files", file=str(src),
                        key="--from", fix=f"--from {src.parent}")
    raise UserError("not a model petrun can add", file=str(src), key="--from",
                    fix="give a Hugging Face folder (config.json + *.safetensors) or a MindSpore "
                        ".ckpt with --config")


def _family(name: str, hf: dict, family: str | None, src: Path) -> str:
    found = hf_config.family_of(hf)
    if family is not None and family not in FAMILIES:
        raise UserError(f"unknown family {family!r}", key="--family",
                        fix=f"use one of {', '.join(FAMILIES)}")
    book = BOOK.get(name)
    if found is None:
        found = family or book
        if found is None:
            raise UserError(f"config.json's model_type {hf.get('model_type')!r} is not one of "
                            "petrun's families (llama, chatglm/glm, gpt2)",
                            file=str(src / "config.json"), key="model_type",
                            fix="add a Llama2, ChatGLM2 or GPT-2 model, or pass --family")
    for given, what in ((family, "--family"), (book, f"the name {name!r}")):
        if given is not None and given != found:
            raise UserError(f"{what} says {given} but config.json describes a {found} model",
                            file=str(src / "config.json"), key="--family" if given is family else "NAME",
                            fix="add the weights under a name of their family")
    return found


def _typed(model: dict):
    from petrun.models.registry import build_config
    return build_config(model)


def _check_weights(ckpt: Path, mc, src: Path) -> int:
    """Every tensor the model has, with its shape, and nothing else; returns the parameter count.
    Checked from the file's index (no MindSpore), so a wrong config never enters the store."""
    from petrun.ckpt.index import read_index
    from petrun.models.shapes import param_shapes
    want = param_shapes(mc)
    have = {n: i for n, i in read_index(ckpt, key="--from").items()
            if not n.startswith(("adam_", "global_step", "loss_scale", "scale_sense"))}
    missing = [n for n in want if n not in have]
    extra = [n for n in have if n not in want]
    bad = [(n, tuple(have[n].shape), want[n].shape) for n in want
           if n in have and tuple(have[n].shape) != tuple(want[n].shape)]
    if missing or extra or bad:
        from petrun.ckpt.diagnose import names_fix, shapes_fix
        if bad and not (missing or extra):
            n, got, exp = bad[0]
            raise UserError(f"{len(bad)} tensors have other shapes than the model config gives "
                            f"(e.g. {n}: {got}, expected {exp})", file=str(src), key="--from",
                            fix=shapes_fix(bad))
        raise UserError(f"the weights do not match the model: {len(missing)} missing (e.g. "
                        f"{', '.join(missing[:2]) or '-'}), {len(extra)} unexpected (e.g. "
                        f"{', '.join(extra[:2]) or '-'})", file=str(src), key="--from",
                        fix=names_fix(list(have), list(want)))
    total = 0
    for spec in want.values():
        size = 1
        for d in spec.shape:
            size *= int(d)
        total += size
    return total


def _tokenizer_files(src: Path, tokenizer) -> list[Path]:
    if tokenizer is not None:
        path = Path(os.path.expanduser(str(tokenizer)))
        if path.is_file():
            files = [path]
            if path.name == "vocab.json":
                files.append(path.parent / "merges.txt")
            missing = [f for f in files if not f.is_file()]
            if missing:
                raise UserError("a GPT-2 vocab.json needs merges.txt beside it",
                                file=str(missing[0]), key="--tokenizer",
                                fix="put merges.txt next to vocab.json, or pass tokenizer.json")
            return files
        if not path.is_dir():
            raise UserError("tokenizer not found", file=str(path), key="--tokenizer",
                            fix="give a tokenizer.model, tokenizer.json, vocab.json (with "
                                "merges.txt) or a folder holding one")
        found = _find_tokenizer(path)
        if not found:
            raise UserError("no tokenizer.model, vocab.json + merges.txt or tokenizer.json here",
                            file=str(path), key="--tokenizer",
                            fix="point --tokenizer at the tokenizer file itself")
        return found
    return _find_tokenizer(src) if src.is_dir() else []


def _find_tokenizer(folder: Path) -> list[Path]:
    for names in _TOKENIZER_SETS:
        if all((folder / n).is_file() for n in names):
            return [folder / n for n in names]
    return []


def _store_tokenizer(files: list[Path], tmp: Path, family: str, final: Path, mc) -> dict | None:
    """Copy the files into tmp/tokenizer and return the processor.tokenizer section (paths as
    they will be after the rename). Loads it once, so a broken or too-large tokenizer is refused
    now rather than at the first run."""
    if not files:
        return None
    from petrun.data.tokenizer import load_tokenizer
    from petrun.models.registry import embedding_rows
    (tmp / TOKENIZER_DIR).mkdir()
    for f in files:
        shutil.copyfile(f, tmp / TOKENIZER_DIR / f.name)
    kind = TOKENIZER_TYPE[family]
    first = files[0].name
    if first == "tokenizer.json":
        section = {"type": kind, "tokenizer_file": first}
    elif first == "vocab.json":
        section = {"type": kind, "vocab_file": first, "merges_file": "merges.txt"}
    else:
        section = {"type": kind, "vocab_file": first}
    if family == "gpt2":   # GPT-2's one special token stands for all four (MindFormers' config)
        section.update({k: "<|endoftext|>" for k in ("unk_token", "bos_token", "eos_token",
                                                     "pad_token")})
    probe = {k: (str(tmp / TOKENIZER_DIR / v) if k.endswith("_file") else v)
             for k, v in section.items()}
    tok = load_tokenizer(probe)
    rows = embedding_rows(mc)
    if tok.vocab_size > rows:
        raise UserError(f"the tokenizer has {tok.vocab_size} tokens, more than the model's "
                        f"{rows} embedding rows", file=str(files[0]), key="--tokenizer",
                        fix="add the tokenizer that came with these weights")
    return {k: (str(final / TOKENIZER_DIR / v) if k.endswith("_file") else v)
            for k, v in section.items()}


def _write_yaml(path: Path, name: str, doc: dict) -> None:
    import yaml
    head = (f"# {name}: written by `petrun models add`. Trainer(model='{name}', pet_method=...)\n"
            "# runs it with the family's recipe YAML; paths are re-pointed at this folder on use.\n")
    path.write_text(head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True),
                    encoding="utf-8")


def _commit(tmp: Path, final: Path) -> None:
    """Rename tmp into place; an old entry is moved aside first and removed only afterwards."""
    from petrun.atomic import fsync_dir
    old = None
    if final.exists():
        old = final.with_name(f"{_TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        raise
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
