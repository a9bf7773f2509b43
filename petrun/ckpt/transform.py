"""Sharded checkpoints: reshard `rank_N/` folders from one strategy to another, merge them into one
file, or split a full checkpoint — MindFormers' TransformCkpt flow (reference/mindformers.md §4) on
mindspore.transform_checkpoints, writing .ckpt (never sharded safetensors, whose dim-1 resharding
is wrong in MindSpore 2.10, feasibility.md §4 pitfall 6).

MindSpore fails silently in several ways; every one is a UserError here (feasibility.md §4):
  * a sharded weight missing from the source strategy is written as rank 0's shard, as if whole →
    weights absent from the strategy must be identical on every rank, and every output tensor
    must have the shape its layout implies (checked after the transform);
  * with several .ckpt in a rank folder MindSpore takes the lexicographically last (stale files)
    → exactly one per folder unless `pick` says which; folders must be rank_0..rank_{N-1};
  * rank counts must match the strategy, and per-stage device counts must divide each other.

Layout of a transform's output: <dst>/rank_<r>/<prefix><r>.ckpt (MindFormers' layout).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from petrun.errors import UserError
from petrun.parallel.strategy import Layout

_RANK_DIR = re.compile(r"rank_(\d+)$")
DEFAULT_PREFIX = "checkpoint_"


# --------------------------------------------------------------------------- sources
@dataclass
class RankFiles:
    root: Path
    files: dict[int, Path]          # rank → the one checkpoint file used for it

    @property
    def ranks(self) -> int:
        return len(self.files)


def is_rank_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and any(_RANK_DIR.match(d.name) for d in p.iterdir() if d.is_dir())


def _rank_file(folder: Path, pick: str | None, key: str) -> Path:
    ckpts = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix == ".ckpt"
                   and not f.name.startswith("."))
    if any(f.suffix == ".safetensors" for f in folder.iterdir()):
        raise UserError("this rank folder holds .safetensors files; petrun transforms .ckpt only",
                        file=str(folder), key=key,
                        fix="convert them with mindspore.safetensors_to_ckpt first")
    if not ckpts:
        raise UserError("no .ckpt file in this rank folder", file=str(folder), key=key,
                        fix="every rank_N folder needs its shard")
    if pick == "newest":
        return max(ckpts, key=lambda f: f.stat().st_mtime)
    if pick:
        chosen = [f for f in ckpts if f.match(pick)]
        if len(chosen) != 1:
            raise UserError(f"--pick {pick!r} matches {len(chosen)} of the files here "
                            f"({', '.join(f.name for f in ckpts[:4])})", file=str(folder), key=key,
                            fix="give a pattern that selects exactly one file per rank folder")
        return chosen[0]
    if len(ckpts) > 1:
        try:   # a petrun run folder knows its newest intact checkpoint
            from petrun.ckpt.store import CheckpointFolder
            found = CheckpointFolder(folder).newest_intact() if CheckpointFolder(folder).is_petrun_folder() else None
        except Exception:  # the store's API is optional here: fall back to strictness
            found = None
        if found is not None:
            return Path(found.adapter)
        raise UserError(f"{len(ckpts)} checkpoint files in one rank folder "
                        f"({', '.join(f.name for f in ckpts[:4])}); MindSpore would silently use "
                        f"the lexicographically last, {ckpts[-1].name}", file=str(folder), key=key,
                        fix="keep one .ckpt per rank folder, or choose with --pick newest / "
                            "--pick 'NAME_PATTERN'")
    return ckpts[0]


def find_rank_files(src: str | Path, *, pick: str | None = None, key: str = "--src") -> RankFiles:
    """The rank_0..rank_{N-1} folders of a distributed checkpoint and one file from each."""
    root = Path(src)
    if not root.is_dir():
        raise UserError("not a folder of rank_N/ shards", file=str(root), key=key,
                        fix="pass the parent of rank_0/ (not rank_0/ itself)")
    if _RANK_DIR.match(root.name) and not is_rank_folder(root):
        raise UserError("this is one rank's folder", file=str(root), key=key,
                        fix=f"pass its parent, {root.parent}")
    ranks = {}
    for d in root.iterdir():
        m = _RANK_DIR.match(d.name)
        if m and d.is_dir():
            ranks[int(m.group(1))] = d
    if not ranks:
        raise UserError("no rank_N/ folders here", file=str(root), key=key,
                        fix="a distributed checkpoint is a folder of rank_0/, rank_1/, … each "
                            "holding one .ckpt")
    missing = sorted(set(range(max(ranks) + 1)) - set(ranks))
    if missing:
        raise UserError(f"rank folders are not contiguous: rank_{missing[0]} is missing "
                        f"(found {', '.join(f'rank_{r}' for r in sorted(ranks)[:6])})",
                        file=str(root), key=key,
                        fix="a distributed checkpoint needs rank_0 … rank_{N-1}; copy the missing "
                            "shards or remove stray folders")
    return RankFiles(root, {r: _rank_file(d, pick, key) for r, d in sorted(ranks.items())})


# --------------------------------------------------------------------------- checks
def _index(path: Path, key: str) -> dict[str, tuple[int, ...]]:
    """{name: shape} of one .ckpt (loaded one file at a time; the transform reads them anyway)."""
    import mindspore as ms
    try:
        params = ms.load_checkpoint(str(path))
    except (ValueError, RuntimeError, OSError) as e:
        raise UserError(f"cannot read checkpoint: {str(e).splitlines()[0][:200]}", file=str(path),
                        key=key, fix="the file is truncated or not a MindSpore .ckpt") from None
    return {n: tuple(p.shape) for n, p in params.items()}


def _devices(layouts: dict[str, Layout] | None) -> tuple[int, int]:
    """(devices per stage, stages) of a strategy; (1, 1) for None (unsliced)."""
    if not layouts:
        return 1, 1
    import math
    per_stage = {math.prod(l.dev_matrix) for l in layouts.values()}
    if len(per_stage) != 1:
        raise UserError(f"strategy entries disagree on the device count ({sorted(per_stage)})",
                        key="strategy", fix="use a strategy file saved by one job")
    return per_stage.pop(), len({l.stage for l in layouts.values()})


@dataclass
class SourceInfo:
    full_shapes: dict[str, tuple[int, ...]]     # every tensor's unsliced shape
    stage_of: dict[str, int | None]             # pipeline stage in the source (None = every rank)
    notes: list[str] = field(default_factory=list)


def check_source(files: dict[int, Path], layouts: dict[str, Layout] | None, *, key: str = "--src",
                 strategy_key: str = "--src-strategy", expected: dict | None = None) -> SourceInfo:
    """Full shapes of the source's tensors, after checking the shards agree with the strategy."""
    per_stage, stages = _devices(layouts)
    if layouts is None and len(files) > 1:
        raise UserError(f"{len(files)} rank folders but no source strategy: petrun cannot tell how "
                        "the tensors were cut", key=strategy_key,
                        fix="pass the strategy the shards were saved with (the run's output/strategy/); "
                            "a data-parallel run keeps a whole copy on every rank: use rank_0's file")
    if layouts is not None and len(files) != per_stage * stages:
        raise UserError(f"the source strategy describes {per_stage * stages} devices "
                        f"({stages} stage(s) × {per_stage}) but the checkpoint has {len(files)} rank "
                        "folders", key=strategy_key,
                        fix="pass the strategy of the run that saved these shards (or remove stale "
                            "rank folders)")
    index = {r: _index(f, key) for r, f in files.items()}
    info = SourceInfo({}, {})
    loose: dict[str, list[int]] = {}
    whole: dict[str, list[int]] = {}    # laid out unsliced: every holder has the same tensor
    for r, names in index.items():
        for name, shape in names.items():
            lay = (layouts or {}).get(name)
            if lay is None:
                loose.setdefault(name, []).append(r)
                continue
            if lay.stage != r // per_stage:
                raise UserError(f"{name} belongs to pipeline stage {lay.stage} but rank {r} "
                                f"(stage {r // per_stage}) holds it", file=str(files[r]), key=key,
                                fix="the strategy and the shards come from different runs")
            full = lay.full_shape(shape)
            if tuple(full) == tuple(shape):
                whole.setdefault(name, []).append(r)
            seen = info.full_shapes.setdefault(name, full)
            if seen != full:
                raise UserError(f"{name}: rank {r}'s shard {shape} implies a full shape {full}, other "
                                f"ranks imply {seen}", file=str(files[r]), key=key,
                                fix="the shards do not belong to one checkpoint")
            info.stage_of[name] = lay.stage
    for name, lay in (layouts or {}).items():
        holders = [r for r, names in index.items() if name in names]
        want = [r for r in files if r // per_stage == lay.stage]
        if holders and holders != want:
            raise UserError(f"{name} is in ranks {holders} but its stage has ranks {want}",
                            key=key, fix="some rank folders hold another run's shards")
    if loose and layouts is not None:
        _check_unsliced(loose, files, index, per_stage, stages, strategy_key)
    _check_replicas({n: r for n, r in whole.items() if len(r) > 1}, files, strategy_key)
    for name, ranks in loose.items():
        info.full_shapes[name] = index[ranks[0]][name]
        info.stage_of[name] = None
    for name, shape in (expected or {}).items():
        got = info.full_shapes.get(name)
        if got is not None and tuple(got) != tuple(shape):
            raise UserError(f"{name}: the shards add up to {got} but the model expects {tuple(shape)}",
                            key=strategy_key,
                            fix="the strategy does not describe how these shards were cut; pass the "
                                "strategy of the run that saved them")
    return info


def _check_replicas(whole: dict[str, list[int]], files, strategy_key) -> None:
    """Tensors the source strategy lays out whole (replicated, e.g. data parallel) must be equal
    on the ranks holding them. Shards cut by another layout (say model parallel 2 read with a data
    parallel 2 strategy) have the right rank count and consistent shapes, and were merged into a
    'complete' checkpoint of half-size tensors before this check."""
    import mindspore as ms
    import numpy as np

    values: dict[str, np.ndarray] = {}
    for r, f in files.items():
        names = {n for n, ranks in whole.items() if r in ranks}
        if not names:
            continue
        got = ms.load_checkpoint(str(f), choice_func=lambda n, keep=names: n in keep)
        for name, param in got.items():
            arr = param.asnumpy() if hasattr(param, "asnumpy") else np.asarray(param)
            first = values.setdefault(name, arr)
            if first is not arr and not np.array_equal(first, arr):
                raise UserError(f"{name} differs between rank folders {whole[name]}, but the "
                                "source strategy says every rank holds it whole: the shards were "
                                "cut by another layout than this strategy's", key=strategy_key,
                                fix="pass the strategy of the run that saved these shards (its "
                                    "output/strategy/, or `petrun ckpt strategy` with that run's "
                                    "parallel_config)")


def _check_unsliced(loose: dict[str, list[int]], files, index, per_stage, stages, strategy_key):
    """Tensors absent from the source strategy must be the same whole tensor on every rank that
    has them; otherwise they were sharded and MindSpore would emit one shard as the whole."""
    import mindspore as ms
    import numpy as np

    everywhere = set(files)
    partial = {n: r for n, r in loose.items() if set(r) != everywhere and stages == 1}
    if partial:
        name, ranks = next(iter(partial.items()))
        raise UserError(f"{len(partial)} tensors are not in the source strategy and only on some "
                        f"ranks, e.g. {name} (ranks {ranks})", key=strategy_key,
                        fix="pass the strategy the shards were saved with (with pipeline stages: "
                            "the folder of every stage's file)")
    wanted = set(loose)
    values: dict[str, object] = {}
    for r, f in files.items():
        names = wanted & set(index[r])
        if not names:
            continue
        got = ms.load_checkpoint(str(f), choice_func=lambda n, keep=names: n in keep)
        for name, param in got.items():
            arr = param.asnumpy() if hasattr(param, "asnumpy") else np.asarray(param)
            first = values.setdefault(name, arr)
            if first is not arr and (first.shape != arr.shape or not np.array_equal(first, arr)):
                raise UserError(f"{name} differs between rank folders but the source strategy has "
                                "no entry for it: it was sharded, and MindSpore would silently "
                                "write one rank's shard as the whole tensor", key=strategy_key,
                                fix="use the strategy saved with strategy_ckpt_config."
                                    "only_trainable_params: False (it lists frozen weights too)")


def check_destination(info: SourceInfo, dst: dict[str, Layout] | None, src: dict[str, Layout] | None,
                      key: str = "--dst-strategy") -> None:
    """Before transforming: every tensor the destination splits must split evenly and be known to
    the source strategy; a tensor the source split must be in the destination strategy."""
    src = src or {}
    bad, unknown, dropped = [], [], []
    for name, full in info.full_shapes.items():
        lay = (dst or {}).get(name)
        if lay is None:
            if dst is not None and name in src and src[name].is_split():
                dropped.append(name)
            continue
        if len(lay.tensor_map) != len(full):
            bad.append(f"{name} (rank {len(full)} tensor, layout for rank {len(lay.tensor_map)})")
            continue
        shard = lay.shard_shape(full)
        if lay.full_shape(shard) != tuple(full) or 0 in shard:
            bad.append(f"{name} {tuple(full)} over {lay.splits()}"
                       + (f" × optimizer shard {lay.opt_shard_size}" if lay.opt_shard_size else ""))
        if src and name not in src and lay.is_split():
            unknown.append(name)
    if bad:
        raise UserError("the destination layout does not split these tensors evenly: "
                        + "; ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""),
                        key=key, fix="choose a model_parallel / optimizer shard size that divides them")
    if unknown:
        raise UserError(f"{len(unknown)} tensors are split by the destination strategy but absent "
                        f"from the source strategy, e.g. {unknown[0]}; MindSpore would copy them "
                        "unsplit", key="--src-strategy",
                        fix="use a source strategy that lists every weight "
                            "(only_trainable_params: False)")
    if dropped:
        raise UserError(f"{len(dropped)} tensors are split in the source but absent from the "
                        f"destination strategy, e.g. {dropped[0]}; MindSpore would write one shard "
                        "as if it were the whole tensor", key=key,
                        fix="use a destination strategy that lists every weight "
                            "(only_trainable_params: False)")


def check_strategy_names(names, layouts: dict[str, Layout], *, where, key: str) -> None:
    """A complete checkpoint and the strategy it is cut by must name the same parameters.

    Strategy files hold no shapes, so one made for another depth or family passes every other
    check and MindSpore copies whatever it does not name whole to every rank. Base weights and
    adapter tensors are compared separately: a strategy that lays out one kind at all (e.g. only
    the adapter, saved with only_trainable_params) must lay it out completely, and a checkpoint
    with base weights must hold every base weight the strategy names. An adapter-only file may
    hold part of the adapter. Optimizer moments and step counters are left out of both sides."""
    from petrun.ckpt.io import is_training_state

    def kind(n):
        return "adapter" if "mindpet_delta_" in n else "base"

    ckpt = {n for n in names if not is_training_state(n)}
    listed = {n for n in layouts if not is_training_state(n)}
    covered = {kind(n) for n in listed}
    unknown = sorted(n for n in ckpt - listed if kind(n) in covered)
    ckpt_base = {n for n in ckpt if kind(n) == "base"}
    absent = sorted(n for n in listed - ckpt if kind(n) == "base") if ckpt_base else []
    parts = []
    if absent:
        parts.append(f"the strategy lays out {len(absent)} parameter(s) the checkpoint lacks, "
                     f"e.g. {', '.join(absent[:3])}")
    if unknown:
        parts.append(f"the checkpoint holds {len(unknown)} tensor(s) the strategy does not lay "
                     f"out, e.g. {', '.join(unknown[:3])} (they would be copied whole to every rank)")
    if parts:
        raise UserError("the strategy was made for another model: " + "; ".join(parts),
                        file=str(where), key=key,
                        fix="regenerate it with `petrun ckpt strategy --config <the checkpoint's "
                            "config> --out DIR` and pass that DIR")


def check_source_devices(src: dict | None, dst: dict | None) -> None:
    (a, _), (b, _) = _devices(src), _devices(dst)
    if max(a, b) % min(a, b):
        raise UserError(f"cannot reshard {a} devices per stage into {b}: one count must divide the "
                        "other", key="--dst-strategy",
                        fix=f"use a destination layout with a device count that divides or is a "
                            f"multiple of {a} (e.g. {a // 2 or 1}, {a}, {a * 2})")


# --------------------------------------------------------------------------- transform
@dataclass
class TransformResult:
    dst: Path
    files: dict[int, Path]
    tensors: int
    notes: list[str] = field(default_factory=list)


def transform(src: str | Path, dst: str | Path, *, src_strategy=None, dst_strategy=None,
              prefix: str = DEFAULT_PREFIX, pick: str | None = None, overwrite: bool = False,
              expected_full_shapes: dict | None = None, src_key: str = "--src",
              src_strategy_key: str = "--src-strategy", dst_strategy_key: str = "--dst-strategy",
              check_names: bool = False) -> TransformResult:
    """Reshard `src` (a folder of rank_N/, or one full .ckpt) from `src_strategy` to `dst_strategy`
    (each a strategy file, a folder of them, or None = unsliced) into `dst`/rank_N/.
    check_names: a complete source must name the parameters the destination strategy names
    (check_strategy_names); off for auto_trans_ckpt, whose strategy comes from the same config."""
    import mindspore as ms

    from petrun.parallel.strategy_file import resolve_strategy

    src, dst = Path(src), Path(dst)
    notes: list[str] = []
    if not src.exists():
        raise UserError("checkpoint path does not exist", file=str(src), key=src_key,
                        fix="pass a folder of rank_N/ shards or a .ckpt file")
    _refuse_nothing_to_do(src, src_strategy, dst_strategy, pick, src_key, src_strategy_key,
                          dst_strategy_key)
    _prepare_dst(dst, overwrite, src)
    work = Path(tempfile.mkdtemp(prefix=".petrun-transform-", dir=dst.parent))
    try:
        if src.is_file():
            if src_strategy not in (None, "", "None"):
                notes.append("the source is one complete file: --src-strategy ignored")
            src_strategy = None
            files = {0: src}
        else:
            files = find_rank_files(src, pick=pick, key=src_key).files
        src_file, src_layouts = resolve_strategy(src_strategy, work, src_strategy_key)
        dst_file, dst_layouts = resolve_strategy(dst_strategy, work, dst_strategy_key)
        check_source_devices(src_layouts, dst_layouts)
        info = check_source(files, src_layouts, key=src_key, strategy_key=src_strategy_key,
                            expected=expected_full_shapes)
        if check_names and src_layouts is None and dst_layouts is not None:
            check_strategy_names(info.full_shapes, dst_layouts, where=dst_strategy,
                                 key=dst_strategy_key)
        check_destination(info, dst_layouts, src_layouts, dst_strategy_key)
        # MindSpore reads <dir>/rank_N/*.ckpt: give it exactly the chosen file per rank.
        staged = work / "src"
        for r, f in files.items():
            (staged / f"rank_{r}").mkdir(parents=True)
            os.symlink(f.resolve(), staged / f"rank_{r}" / f.name)
        out = work / "out"
        try:
            ms.transform_checkpoints(str(staged), str(out), prefix, src_file, dst_file)
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise UserError(f"MindSpore could not transform the checkpoint: {str(e).splitlines()[0][:300]}",
                            file=str(src), key=src_key,
                            fix="check that the strategies belong to the checkpoint and the target "
                                "job") from None
        written = verify_output(out, info, dst_layouts, prefix)
        dst.mkdir(parents=True, exist_ok=True)
        result = {}
        for r, f in written.items():
            target = dst / f"rank_{r}"
            target.mkdir(parents=True, exist_ok=True)
            final = target / f"{prefix}{r}.ckpt"
            shutil.move(str(f), final)
            result[r] = final
        return TransformResult(dst, result, len(info.full_shapes), notes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unset(strategy) -> bool:
    return strategy in (None, "", "None")


def _refuse_nothing_to_do(src: Path, src_strategy, dst_strategy, pick, src_key: str,
                          src_strategy_key: str, dst_strategy_key: str) -> None:
    """One unsliced file and no destination layout: MindSpore would fail with "None of the
    parameters ... are in either src strategy or dst strategy"; say what the user has instead."""
    if not _unset(dst_strategy):
        return
    if src.is_file():
        raise UserError(f"this is already one complete checkpoint and no {dst_strategy_key} was "
                        "given: there is nothing to merge", file=str(src), key=src_key,
                        fix=f"use {src} as it is (e.g. --load_checkpoint {src}); to cut it for a "
                            f"parallel job pass {dst_strategy_key}")
    if not _unset(src_strategy):
        return
    files = find_rank_files(src, pick=pick, key=src_key).files
    if len(files) == 1:
        only = files[0]
        raise UserError(f"the source has one rank and no {src_strategy_key}: it is already one "
                        f"complete checkpoint, {only}", file=str(src), key=src_key,
                        fix=f"use {only} directly (e.g. --load_checkpoint {only}); to cut it for a "
                            f"parallel job pass {dst_strategy_key}")


def _prepare_dst(dst: Path, overwrite: bool, src: Path) -> None:
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise UserError("the destination is inside the source", file=str(dst), key="--dst",
                        fix="write the transformed checkpoint to another folder")
    if dst.exists() and any(dst.iterdir()):
        stale = [d for d in dst.iterdir() if _RANK_DIR.match(d.name) or d.suffix == ".ckpt"]
        if stale and not overwrite:
            raise UserError("the destination already holds rank folders or checkpoints", file=str(dst),
                            key="--dst", fix="choose an empty folder, or pass --overwrite to replace them")
        for d in stale:
            shutil.rmtree(d) if d.is_dir() else d.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)


def verify_output(out: Path, info: SourceInfo, dst: dict[str, Layout] | None, prefix: str
                  ) -> dict[int, Path]:
    """Every destination rank has one file whose tensors have exactly the shapes their layouts
    imply — the check that catches MindSpore writing a shard where a whole tensor belongs."""
    per_stage, stages = _devices(dst)
    expect_ranks = per_stage * stages if dst else 1
    found = {}
    for r in range(expect_ranks):
        files = sorted((out / f"rank_{r}").glob("*.ckpt")) if (out / f"rank_{r}").is_dir() else []
        if len(files) != 1:
            raise UserError(f"MindSpore wrote {len(files)} files for destination rank {r}",
                            key="--dst", fix="report this: petrun expected exactly one")
        found[r] = files[0]
    problems = []
    for r, f in found.items():
        shapes = _index(f, "--dst")
        stage = r // per_stage
        for name, full in info.full_shapes.items():
            lay = (dst or {}).get(name)
            if lay is not None and lay.stage != stage:
                continue
            if lay is None and dst and info.stage_of.get(name) not in (None, stage):
                continue
            want = lay.shard_shape(full) if lay is not None else tuple(full)
            got = shapes.get(name)
            if got is None:
                problems.append(f"rank {r} lacks {name}")
            elif tuple(got) != tuple(want):
                problems.append(f"rank {r}: {name} is {tuple(got)}, its layout needs {tuple(want)}")
    if problems:
        raise UserError("the transformed checkpoint is wrong: " + "; ".join(problems[:3])
                        + (f" ({len(problems)} problems)" if len(problems) > 3 else ""),
                        key="--dst-strategy",
                        fix="the strategies do not describe these tensors; pass the strategy files "
                            "saved with only_trainable_params: False")
    return found


def shard(full: str | Path, strategy, dst: str | Path, *, prefix: str = DEFAULT_PREFIX,
          overwrite: bool = False, expected_full_shapes: dict | None = None) -> TransformResult:
    """Split one complete checkpoint into the rank_N/ shards `strategy` describes."""
    full = Path(full)
    if not full.is_file():
        raise UserError("not a checkpoint file", file=str(full), key="--src",
                        fix="pass one complete .ckpt (merge rank_N/ shards with `petrun ckpt transform`)")
    if strategy in (None, "", "None"):
        raise UserError("no strategy to shard into", key="--strategy",
                        fix="write one with `petrun ckpt strategy --config C --out DIR` and pass DIR")
    return transform(full, dst, src_strategy=None, dst_strategy=strategy, prefix=prefix,
                     overwrite=overwrite, expected_full_shapes=expected_full_shapes,
                     dst_strategy_key="--strategy", check_names=True)


# --------------------------------------------------------------------------- auto_trans_ckpt
def source_units(path: str | Path, key: str = "load_checkpoint") -> list[tuple[str, Path]]:
    """MindFormers' transform units of `load_checkpoint`: a folder of rank_N/ is one unit named
    after the folder; a folder of loose .ckpt files is one unit per file (base + adapter stay
    apart); a single file is one unit named after its stem."""
    p = Path(path)
    if p.is_file():
        return [(p.stem, p)]
    if not p.is_dir():
        raise UserError("checkpoint path does not exist", file=str(p), key=key,
                        fix="pass a .ckpt file, a folder of them, or a folder of rank_N/ shards")
    if is_rank_folder(p):
        return [(p.name, p)]
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix == ".ckpt" and not f.name.startswith("."))
    if not files:
        raise UserError("no .ckpt files and no rank_N/ folders here", file=str(p), key=key,
                        fix="pass a .ckpt file, a folder of them, or a folder of rank_N/ shards")
    return [(f.stem, f) for f in files]


def _process_start() -> float:
    try:
        import psutil
        return psutil.Process(os.getpid()).create_time()
    except Exception:  # psutil ships with MindSpore; this only guards odd installs
        return _IMPORTED_AT


_IMPORTED_AT = time.time()


def auto_transform(*, load_checkpoint: str, src_strategy, dst_strategy, output_dir: str | Path,
                   rank: int, world: int, expected_full_shapes: dict | None = None,
                   timeout_s: float = 7200.0, poll_s: float = 1.0) -> list[Path]:
    """`auto_trans_ckpt: True`: rank 0 transforms every unit of `load_checkpoint` into
    <output_dir>/transformed_checkpoint/<unit>/rank_N/checkpoint_N.ckpt while the other ranks wait
    (with a timeout, unlike MindFormers); returns the files this rank loads.

    dst_strategy None means every rank holds whole tensors (data parallel): all load rank_0's file.
    Ranks agree through marker files in the output folder: a marker is trusted only if written
    after this process started, so a previous run's marker is never mistaken for this one's.
    """
    root = Path(output_dir) / "transformed_checkpoint"
    marker = root / "transform_status.json"
    src = Path(load_checkpoint)
    if root.resolve() in [src.resolve(), *src.resolve().parents]:
        raise UserError("load_checkpoint points inside output_dir/transformed_checkpoint, which "
                        "auto_trans_ckpt rewrites", key="load_checkpoint",
                        fix="copy the checkpoint elsewhere first (or load it with auto_trans_ckpt False)")
    units = source_units(src)
    if rank == 0:
        try:
            if root.exists():
                shutil.rmtree(root)
            root.mkdir(parents=True)
            for name, path in units:
                transform(path, root / name, src_strategy=src_strategy if path.is_dir() else None,
                          dst_strategy=dst_strategy, expected_full_shapes=expected_full_shapes,
                          src_key="load_checkpoint", src_strategy_key="src_strategy_path_or_dir",
                          dst_strategy_key="strategy")
        except Exception as e:
            _write_marker(marker, ok=False, error=str(e))
            raise
        _write_marker(marker, ok=True)
    else:
        _wait_marker(marker, timeout_s, poll_s)
    own = rank if dst_strategy not in (None, "", "None") else 0
    out = []
    for name, _ in units:
        files = sorted((root / name / f"rank_{own}").glob("*.ckpt"))
        if len(files) != 1:
            raise UserError(f"transformed checkpoint for rank {own} is missing", file=str(root / name),
                            key="auto_trans_ckpt", fix="re-run; if it persists, report it")
        out.append(files[0])
    return out


def _write_marker(path: Path, ok: bool, error: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"ok": ok, "error": error, "time": time.time(), "pid": os.getpid()}))
    tmp.replace(path)


def _wait_marker(path: Path, timeout_s: float, poll_s: float) -> None:
    started = _process_start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = json.loads(path.read_text())
        except (OSError, ValueError):
            status = None
        if status and float(status.get("time", 0)) > started:
            if status.get("ok"):
                return
            raise UserError(f"rank 0 failed to transform the checkpoint: {status.get('error', '?')}",
                            key="auto_trans_ckpt", fix="see rank 0's log")
        time.sleep(poll_s)
    raise UserError(f"waited {timeout_s:.0f} s for rank 0 to transform the checkpoint",
                    key="auto_trans_ckpt",
                    fix="check rank 0's log; on several nodes output_dir must be a shared folder")
