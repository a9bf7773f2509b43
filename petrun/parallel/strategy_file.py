"""MindSpore strategy files (the `ckpt_strategy_rank_N.ckpt` a semi-auto job saves), read and written.

Format (mindspore/train/node_strategy.proto, proto2; reference/feasibility.md §4): a
ParallelStrategyMap with `current_stage`, `parallel_strategy_item` (op strategies; the first item's
`parallel_strategys.stage` is how merge_pipeline_strategys learns a file's pipeline stage) and one
`parallel_layout_item` per parameter (dev_matrix, tensor_map, param_split_shape — which must exist
even if empty — field, opt_weight_shard_step/size). A merged pipeline file names each parameter
"<stage>-<name>". Files ending in .json hold the same fields as JSON (MindSpore reads both).

MindSpore is imported only to reach its generated protobuf module.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from petrun.errors import UserError
from petrun.parallel.strategy import Layout

MERGED_NAME = "merged_ckpt_strategy.ckpt"
NOT_A_STRATEGY_FIX = ("pass the folder (or one ckpt_strategy_rank_N.ckpt file) that `petrun ckpt "
                      "strategy --out` wrote, or MindFormers' output/strategy/ folder")


def _pb():
    from mindspore.train import node_strategy_pb2
    return node_strategy_pb2


def _stage_prefixed(name: str) -> tuple[int | None, str]:
    head, sep, tail = name.partition("-")
    if sep and head.isdigit():
        return int(head), tail
    return None, name


def encode(layouts: dict[str, Layout], stage: int = 0, merged: bool = False) -> bytes:
    """Serialized ParallelStrategyMap for one stage's layouts (merged: every stage, names prefixed)."""
    pb = _pb()
    m = pb.ParallelStrategyMap()
    m.current_stage = 1 if merged else int(stage)
    stages = sorted({l.stage for l in layouts.values()}) if merged else [int(stage)]
    for s in stages:
        # One op-strategy item per stage: merge_pipeline_strategys reads the stage from it.
        item = m.parallel_strategy_item.add()
        item.node_name = f"petrun-stage{s}"
        item.parallel_strategys.stage = s
        first = next((l for l in layouts.values() if l.stage == s), None)
        item.parallel_strategys.parallel_strategy.add().dim.extend(
            list(first.dev_matrix) if first else [1])
    for name, layout in layouts.items():
        li = m.parallel_layout_item.add()
        li.param_name = f"{layout.stage}-{name}" if merged else name
        lay = li.parallel_layouts
        lay.dev_matrix.add().dim.extend(int(d) for d in layout.dev_matrix)
        lay.tensor_map.add().dim.extend(int(t) for t in layout.tensor_map)
        lay.param_split_shape.add()   # required even when empty (uneven splits are unused)
        lay.field = 0
        lay.opt_weight_shard_step = int(layout.opt_shard_step)
        lay.opt_weight_shard_size = int(layout.opt_shard_size)
    return m.SerializeToString()


def write_strategy(path: str | Path, layouts: dict[str, Layout], stage: int = 0,
                   merged: bool = False) -> Path:
    """Write one strategy file (protobuf, or JSON when `path` ends in .json), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        data = {"current_stage": 1 if merged else stage,
                "parallel_strategy_item": {f"petrun-stage{s}": {"stage": s, "parallel_strategy": []}
                                           for s in sorted({l.stage for l in layouts.values()} if merged
                                                           else {stage})},
                "parallel_layout_item": {
                    (f"{l.stage}-{n}" if merged else n): {
                        "dev_matrix": list(l.dev_matrix), "tensor_map": list(l.tensor_map),
                        "param_split_shape": [], "field": 0,
                        "opt_weight_shard_step": l.opt_shard_step,
                        "opt_weight_shard_size": l.opt_shard_size}
                    for n, l in layouts.items()}}
        payload = json.dumps(data, indent=1).encode()
    else:
        payload = encode(layouts, stage, merged)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(payload)
    tmp.replace(path)
    return path


def read_strategy(path: str | Path, key: str = "--strategy") -> dict[str, Layout]:
    """{parameter name: Layout} of a strategy file; the stage comes from a merged file's
    "<stage>-" prefix or, otherwise, from the file's op-strategy items."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read strategy file ({e.strerror or e})", file=str(path), key=key,
                        fix="pass an existing ckpt_strategy_rank_N.ckpt (or its folder)") from None
    if not raw:
        raise UserError("strategy file is empty", file=str(path), key=key,
                        fix="re-create it (petrun ckpt strategy --config …, or the training job)")
    if path.suffix == ".json":
        try:
            data = json.loads(raw)
            if "parallel_layout_item" not in data and "parallel_strategy_item" not in data:
                raise KeyError("parallel_layout_item")
            items = data.get("parallel_layout_item") or {}
            strat = data.get("parallel_strategy_item") or {}
            file_stage = int(next(iter(strat.values())).get("stage", 0)) if strat else 0
            entries = [(n, v["dev_matrix"], v["tensor_map"], v.get("opt_weight_shard_size", 0),
                        v.get("opt_weight_shard_step", 0)) for n, v in items.items()]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"not a MindSpore JSON strategy file ({e})", file=str(path), key=key,
                            fix=NOT_A_STRATEGY_FIX) from None
    else:
        pb = _pb()
        m = pb.ParallelStrategyMap()
        try:
            m.ParseFromString(raw)
        except Exception as e:  # protobuf's DecodeError and friends
            raise UserError(f"not a MindSpore strategy file ({type(e).__name__})", file=str(path),
                            key=key, fix=NOT_A_STRATEGY_FIX) from None
        if not m.parallel_layout_item and not m.parallel_strategy_item:
            # protobuf parses many unrelated files into an empty message without complaint
            raise UserError("not a MindSpore strategy file (no parameter layouts in it)",
                            file=str(path), key=key, fix=NOT_A_STRATEGY_FIX)
        file_stage = m.parallel_strategy_item[0].parallel_strategys.stage if m.parallel_strategy_item else 0
        entries = []
        for li in m.parallel_layout_item:
            lay = li.parallel_layouts
            if not lay.dev_matrix or not lay.tensor_map:
                # every layout MindSpore writes has both; a file that parses without them is some
                # other protobuf (a tokenizer.model, a checkpoint) read by accident
                raise UserError(f"not a MindSpore strategy file (entry {li.param_name!r} has no "
                                "dev_matrix/tensor_map)", file=str(path), key=key,
                                fix=NOT_A_STRATEGY_FIX)
            # Newer MindSpore writes one TensorMap per tensor dim for multi-axis layouts.
            tmap = (list(lay.tensor_map[0].dim) if len(lay.tensor_map) == 1
                    else [list(t.dim) for t in lay.tensor_map if list(t.dim)])
            entries.append((li.param_name, list(lay.dev_matrix[0].dim), tmap,
                            lay.opt_weight_shard_size, lay.opt_weight_shard_step))
    out: dict[str, Layout] = {}
    for name, dev, tmap, size, step in entries:
        stage, plain = _stage_prefixed(name)
        if any(isinstance(t, list) for t in tmap):
            raise UserError(f"entry {name!r} splits one tensor dim over several device axes, "
                            "which petrun's checks do not model", file=str(path), key=key,
                            fix="transform it with MindSpore's API directly")
        out[plain] = Layout(tuple(int(d) for d in dev), tuple(int(t) for t in tmap), int(size),
                            int(step), file_stage if stage is None else stage)
    if not out:
        raise UserError("strategy file lists no parameters", file=str(path), key=key,
                        fix="save strategies with strategy_ckpt_config.only_trainable_params: False")
    return out


def strategy_files(directory: str | Path) -> list[Path]:
    """The per-rank strategy files of a folder (merged files and hidden temporaries excluded)."""
    d = Path(directory)
    files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix in (".ckpt", ".json")
                   and not f.name.startswith(".") and not f.name.startswith("merged"))
    return files


def merge_strategies(directory: str | Path, dst: str | Path, key: str = "--strategy") -> Path:
    """One merged file from a folder of per-rank/per-stage files, as MindFormers does for
    src_strategy_path_or_dir — via mindspore.merge_pipeline_strategys, after checking that the
    folder holds every stage once (MindSpore silently keeps the first file of a stage)."""
    import shutil
    import tempfile

    import mindspore as ms

    directory = Path(directory)
    files = strategy_files(directory)
    if not files:
        raise UserError("no strategy files (*.ckpt / *.json) in this folder", file=str(directory),
                        key=key, fix="point it at output/strategy of the run that saved the checkpoint")
    if len({f.suffix for f in files}) > 1:
        raise UserError("this folder mixes .ckpt and .json strategy files", file=str(directory),
                        key=key, fix="keep one format")
    by_stage: dict[int, dict[str, Layout]] = {}
    for f in files:
        layouts = read_strategy(f, key)
        stage = next(iter(layouts.values())).stage
        seen = by_stage.setdefault(stage, layouts)
        if _shape_of(seen) != _shape_of(layouts):
            raise UserError(f"{f.name} disagrees with another stage-{stage} file of this folder "
                            "(different parameters or layouts): the folder mixes runs",
                            file=str(directory), key=key,
                            fix="keep only the strategy files of the run that saved the checkpoint")
    stages = sorted(by_stage)
    if stages != list(range(len(stages))):
        raise UserError(f"the strategy files cover pipeline stages {stages}, not 0..{len(stages) - 1}",
                        file=str(directory), key=key,
                        fix="copy every stage's ckpt_strategy_rank_N.ckpt into the folder")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # merge_pipeline_strategys globs the folder; give it exactly the checked files.
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".merge-") as tmp:
        for f in files:
            shutil.copyfile(f, Path(tmp) / f.name)
        ms.merge_pipeline_strategys(tmp, str(dst.with_suffix(files[0].suffix)))
    return dst.with_suffix(files[0].suffix)


def _shape_of(layouts: dict[str, Layout]):
    return {n: (l.dev_matrix, l.tensor_map, l.opt_shard_size, l.opt_shard_step) for n, l in layouts.items()}


def resolve_strategy(path, workdir: str | Path, key: str) -> tuple[str | None, dict[str, Layout] | None]:
    """(file MindSpore should read, its layouts) for a strategy given as a file, a folder or None."""
    if path in (None, "", "None"):
        return None, None
    p = Path(path)
    if p.is_dir():
        files = strategy_files(p)
        layouts = [read_strategy(f, key) for f in files] if files else []
        if files and len({next(iter(l.values())).stage for l in layouts}) == 1:
            first = layouts[0]
            if any(_shape_of(l) != _shape_of(first) for l in layouts[1:]):
                raise UserError("the strategy files of this folder disagree (different parameters "
                                "or layouts): the folder mixes runs", file=str(p), key=key,
                                fix="keep only the strategy files of the run that saved the checkpoint")
            return str(files[0]), first   # one stage: every rank's file describes the whole net
        merged = merge_strategies(p, Path(workdir) / f"merged_{key.strip('-').replace('-', '_')}.ckpt", key)
        return str(merged), read_strategy(merged, key)
    if not p.is_file():
        raise UserError("strategy file does not exist", file=str(p), key=key,
                        fix="pass a ckpt_strategy_rank_N.ckpt file or the folder holding them")
    layouts = read_strategy(p, key)
    stages = {l.stage for l in layouts.values()}
    if stages != {0} and 0 not in stages:
        raise UserError(f"this is the stage-{min(stages)} file of a pipeline-parallel run: it lacks "
                        "the other stages' parameters", file=str(p), key=key,
                        fix="pass the folder that holds every rank's ckpt_strategy_rank_N.ckpt "
                            "(petrun merges them), or a merged_ckpt_strategy.ckpt")
    return str(p), layouts


def _rank_file_name(stem: str):
    return re.compile(rf"^{re.escape(stem)}_rank_\d+\.(ckpt|json)$")


def check_out_dir(out_dir: str | Path, *, overwrite: bool = False, stem: str = "ckpt_strategy",
                  key: str = "--out") -> list[Path]:
    """The strategy files already in `out_dir` that writing a plan there replaces. Refused unless
    `overwrite`: a folder keeping an earlier, larger layout's extra ranks reads as a mix of runs."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError("--out must be a folder, and this path is a file", file=str(out), key=key,
                        fix="name a new or empty folder for the ckpt_strategy_rank_N files, "
                            "e.g. --out strategy/")
    if not out.is_dir():
        return []
    ours = _rank_file_name(stem)
    found = strategy_files(out)
    old = [f for f in found if ours.match(f.name)]
    others = [f.name for f in found if not ours.match(f.name)]
    if others:   # readers take every .ckpt/.json of a strategy folder; --overwrite must not delete them
        raise UserError(f"the folder holds other .ckpt/.json files ({', '.join(others[:3])}) that "
                        "would be read as strategy files", file=str(out), key=key,
                        fix="choose a new or empty folder for --out")
    if old and not overwrite:
        raise UserError(f"the folder already holds {len(old)} strategy file(s) "
                        f"({', '.join(f.name for f in old[:3])}{', ...' if len(old) > 3 else ''})",
                        file=str(out), key=key,
                        fix="choose a new or empty folder, or pass --overwrite to replace them")
    return old


def write_plan(plan, out_dir: str | Path, *, fmt: str = "ckpt", stem: str = "ckpt_strategy",
               overwrite: bool = False) -> list[Path]:
    """One file per rank, as a compiled job saves them: <out>/<stem>_rank_<r>.<fmt> (each rank's
    file holds its pipeline stage's parameters). Strategy files already there are refused, or
    with `overwrite` replaced as a set: the new files are written aside first, and a failure
    while swapping puts the old set back, so the folder never mixes two layouts."""
    import os
    import shutil
    import tempfile

    out = Path(out_dir)
    old = check_out_dir(out, overwrite=overwrite, stem=stem)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder ({e.strerror or e})", file=str(out), key="--out",
                        fix="choose a folder whose parent exists as a folder and is writable") from None
    per_stage = plan.dims.stage_devices
    stages = plan.stages
    staging = trash = None
    set_aside: list[Path] = []
    placed: list[Path] = []
    try:
        staging = Path(tempfile.mkdtemp(prefix=".petrun-strategy-", dir=out))
        new = [write_strategy(staging / f"{stem}_rank_{r}.{fmt}", stages[r // per_stage],
                              stage=r // per_stage) for r in range(plan.dims.devices)]
        trash = Path(tempfile.mkdtemp(prefix=".petrun-old-strategy-", dir=out))
        for f in old:
            os.replace(f, trash / f.name)
            set_aside.append(f)
        for f in new:
            os.replace(f, out / f.name)
            placed.append(out / f.name)
    except BaseException as e:
        for f in placed:
            f.unlink(missing_ok=True)
        for f in set_aside:
            os.replace(trash / f.name, f)
        if isinstance(e, OSError):
            raise UserError(f"could not write the strategy files ({e.strerror or e})", file=str(out),
                            key="--out", fix="check free disk space and that the folder is "
                                             "writable") from None
        raise
    finally:
        for d in (staging, trash):
            if d is not None:
                shutil.rmtree(d, ignore_errors=True)
    return placed
