"""A folder of training checkpoints (output/checkpoint/rank_N): what is on disk and how it changes.

One checkpoint of a run is a set of files sharing a stem, MindFormers' name for the step:

    <prefix>_rank_<r>-<epoch>_<step>.ckpt              adapter (trainable) weights, MindFormers names:
                                                       what you ship, load, merge or export
    train_state/<prefix>_rank_<r>-<epoch>_<step>.ckpt  what resuming needs besides the weights:
                                                       adam_m.* / adam_v.*, global_step, loss_scale
                                                       and the dynamic-loss-scale counters
    <prefix>_rank_<r>-<epoch>_<step>.json              petrun's manifest: step, epoch, data cursor,
                                                       RNG state, config (+ hash), the chat template
                                                       raw data was rendered with (chat_template,
                                                       read by infer/chat.model_template), and the
                                                       size and SHA-256 of the two files above
    latest                                             one line: the stem of the newest complete
                                                       checkpoint

The optimizer state sits in a subfolder so the folder's .ckpt files are exactly the adapters:
MindFormers (and `load_checkpoint: <this folder>`) take every .ckpt in a rank folder as weights.

A save writes the adapter, then the state, then the manifest, then `latest`, each crash-safely
(ckpt/io.py). A checkpoint exists once its manifest exists and its files match the manifest, so
a kill -9 at any instant leaves the previous checkpoints intact and at worst a newer, incomplete
one that readers skip. Pruning (keep_checkpoint_max) deletes a manifest before its files.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from petrun.atomic import (describe_file, fsync_dir, is_leftover_tmp, sha256_file, write_error,
                           write_text_atomic)
from petrun.ckpt.io import save_params
from petrun.ckpt.layout import checkpoint_dir
from petrun.errors import UserError

MANIFEST_FORMAT = "petrun.checkpoint/1"
LATEST = "latest"
STATE_DIR = "train_state"
_STEM = re.compile(r"^(?P<prefix>.+)_rank_(?P<rank>\d+)-(?P<epoch>\d+)_(?P<step>\d+)$")

Warn = Callable[[str], None]


def checkpoint_stem(prefix: str, rank: int, epoch: int, step_in_epoch: int) -> str:
    """MindFormers' checkpoint name without extension: <prefix>_rank_<r>-<epoch>_<step>."""
    return f"{prefix}_rank_{rank}-{epoch}_{step_in_epoch}"


@dataclass
class Checkpoint:
    folder: Path
    stem: str
    manifest: dict

    @property
    def adapter(self) -> Path:
        return self.folder / f"{self.stem}.ckpt"

    @property
    def state(self) -> Path:
        return self.folder / STATE_DIR / f"{self.stem}.ckpt"

    @property
    def manifest_path(self) -> Path:
        return self.folder / f"{self.stem}.json"

    @property
    def step(self) -> int:
        return int(self.manifest["step"])

    def problem(self) -> str | None:
        """Why this checkpoint cannot be used (missing, truncated or altered file), or None."""
        for role, entry in sorted(self.manifest.get("files", {}).items()):
            path = self.folder / entry["path"]
            if not path.is_file():
                return f"its {role} file {path} is missing"
            size = path.stat().st_size
            if size != entry["bytes"]:
                return f"its {role} file {path} has {size} bytes, the manifest says {entry['bytes']}"
            if sha256_file(path) != entry["sha256"]:
                return f"its {role} file {path} does not match the SHA-256 in its manifest"
        # petrun refuses to save inf/NaN weights and says so in the manifest; checkpoints from
        # before that rule are scanned (one read of the adapter, like the SHA-256 above).
        if not self.manifest.get("finite") and self.adapter.is_file():
            bad = nonfinite_in_file(self.adapter)
            if bad:
                return (f"its weights {self.adapter} hold {bad} inf/NaN values (saved after an "
                        "update that diverged)")
        return None


def nonfinite_in_file(path: Path) -> int:
    """inf/NaN values in the floating-point tensors of a .ckpt, read one tensor at a time."""
    import numpy as np

    from petrun.ckpt.stream import FLOATS, CkptReader, cast
    bad = 0
    with CkptReader(path) as reader:
        for name, info in reader.infos.items():
            if info.dtype in FLOATS:
                values, _ = cast(reader.read(name), info.dtype, "float32")
                bad += int(np.count_nonzero(~np.isfinite(values)))
    return bad


def _read_manifest(path: Path) -> dict | None:
    """The manifest at `path`, or None when it is not a readable petrun checkpoint manifest."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    if not isinstance(data.get("files"), dict) or not isinstance(data.get("step"), int):
        return None
    return data


def verify_against_manifest(ckpt_file: str | Path) -> str | None:
    """For a .ckpt inside a petrun checkpoint folder: the reason it is damaged, else None.

    Files without a manifest (a base model, a MindFormers checkpoint) are not judged here.
    """
    p = Path(ckpt_file)
    folder, stem = (p.parent.parent, p.stem) if p.parent.name == STATE_DIR else (p.parent, p.stem)
    manifest = _read_manifest(folder / f"{stem}.json")
    if manifest is None:
        return None
    ckpt = Checkpoint(folder, stem, manifest)
    for entry in manifest["files"].values():
        if (folder / entry["path"]).resolve() == p.resolve():
            return ckpt.problem()
    return None


def manifest_of(path: str | Path) -> dict | None:
    """The manifest of the checkpoint `path` denotes, as loading reads it: a .ckpt file with its
    manifest beside it, or a petrun rank folder (its `latest`, else its newest checkpoint);
    None for anything else (a base model, a MindFormers checkpoint, a missing path). Not
    verified: a reader asking how the run was made, not loading its weights."""
    p = Path(path)
    if p.is_file():
        folder = p.parent.parent if p.parent.name == STATE_DIR else p.parent
        return _read_manifest(folder / f"{p.stem}.json")
    if not p.is_dir():
        return None
    folder = CheckpointFolder(p)
    latest = folder.latest_stem()
    found = folder.get(latest) if latest else None
    if found is None:
        found = next(iter(folder.checkpoints()), None)
    return found.manifest if found is not None else None


class CheckpointFolder:
    """The checkpoints of one rank: save, list, verify, prune."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ---------------------------------------------------------------- reading
    def is_petrun_folder(self) -> bool:
        return (self.path / LATEST).is_file() or bool(self.checkpoints())

    def latest_stem(self) -> str | None:
        try:
            stem = (self.path / LATEST).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return stem or None

    def get(self, stem: str) -> Checkpoint | None:
        manifest = _read_manifest(self.path / f"{stem}.json")
        return Checkpoint(self.path, stem, manifest) if manifest is not None else None

    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint with a readable manifest, newest first (by save time, then step)."""
        if not self.path.is_dir():
            return []
        found = []
        for f in self.path.glob("*.json"):
            manifest = _read_manifest(f)
            if manifest is not None:
                found.append(Checkpoint(self.path, f.stem, manifest))
        return sorted(found, key=lambda c: (c.manifest.get("saved_at", 0.0), c.step), reverse=True)

    def newest_intact(self, warn: Warn | None = None) -> Checkpoint | None:
        """`latest` if it is intact, else the newest checkpoint whose files match its manifest.

        Each damaged checkpoint passed over is reported through `warn`, by name.
        """
        candidates = self.checkpoints()
        latest = self.latest_stem()
        if latest is not None:
            pointed = next((c for c in candidates if c.stem == latest), None)
            if pointed is None:
                if warn:
                    warn(f"{self.path / LATEST} names {latest}, whose manifest "
                         f"{self.path / (latest + '.json')} is missing or unreadable; "
                         "falling back to the newest intact checkpoint")
            else:
                candidates.remove(pointed)
                candidates.insert(0, pointed)
        for ckpt in candidates:
            problem = ckpt.problem()
            if problem is None:
                return ckpt
            if warn:
                warn(f"skipping damaged checkpoint {ckpt.stem} (step {ckpt.step}): {problem}")
        return None

    # ---------------------------------------------------------------- writing
    def save(self, stem: str, *, adapter: Iterable, state: Iterable, append: dict,
             manifest: dict) -> Checkpoint:
        """Write one checkpoint (adapter, state, manifest, then `latest`), each step crash-safe."""
        adapter_path = save_params(adapter, self.path / f"{stem}.ckpt", append=append)
        state_path = save_params(state, self.path / STATE_DIR / f"{stem}.ckpt", append=append)
        files = {}
        for role, path in (("adapter", adapter_path), ("state", state_path)):
            entry = describe_file(path)
            entry["path"] = str(path.relative_to(self.path))
            files[role] = entry
        manifest = {"format": MANIFEST_FORMAT, **manifest, "files": files, "saved_at": time.time()}
        write_text_atomic(self.path / f"{stem}.json", json.dumps(manifest, indent=1) + "\n")
        write_text_atomic(self.path / LATEST, stem + "\n")
        return Checkpoint(self.path, stem, manifest)

    def point_latest(self, stem: str) -> None:
        """Make `stem` the checkpoint a resume or an --adapter folder picks."""
        write_text_atomic(self.path / LATEST, stem + "\n")

    def prune(self, keep: int, run_id: str) -> list[str]:
        """keep_checkpoint_max: delete this run's checkpoints beyond the newest `keep`.

        Checkpoints of other runs that share the folder are never touched. The manifest goes
        first, so a crash mid-prune leaves stray files, never a manifest without its files.
        """
        mine = [c for c in self.checkpoints() if c.manifest.get("run_id") == run_id]
        removed = []
        latest = self.latest_stem()
        for ckpt in mine[keep:]:
            if ckpt.stem == latest:
                continue
            self._remove(ckpt)
            removed.append(ckpt.stem)
        return removed

    def remove_all(self) -> int:
        """Every checkpoint of the folder and `latest` (a new run replacing an old one, as a
        set); `latest` goes first, so a crash midway leaves no pointer to a removed checkpoint."""
        try:
            (self.path / LATEST).unlink(missing_ok=True)
        except OSError as e:
            raise write_error(e, self.path / LATEST) from None
        found = self.checkpoints()
        for ckpt in found:
            self._remove(ckpt)
        return len(found)

    def _remove(self, ckpt: Checkpoint) -> None:
        """The manifest first: a crash midway leaves stray files, never a manifest without them."""
        try:
            ckpt.manifest_path.unlink()
            fsync_dir(self.path)
            for entry in ckpt.manifest["files"].values():
                (self.path / entry["path"]).unlink(missing_ok=True)
        except OSError as e:
            raise write_error(e, ckpt.manifest_path) from None

    def remove_leftovers(self) -> list[str]:
        """Temporary files of saves that were killed midway (never a complete file)."""
        removed = []
        for folder in (self.path, self.path / STATE_DIR):
            if not folder.is_dir():
                continue
            for f in folder.iterdir():
                if f.is_file() and is_leftover_tmp(f.name):
                    f.unlink(missing_ok=True)
                    removed.append(f.name)
        return removed


# -------------------------------------------------------------------- resume
def _rank_folder_of(path: Path, rank: int) -> Path | None:
    """The rank folder that `path` (an output_dir, its checkpoint/ or a rank_N folder) means."""
    for candidate in (checkpoint_dir(path, rank), path / f"rank_{rank}"):
        if candidate.is_dir():
            return candidate
    if CheckpointFolder(path).is_petrun_folder():
        named = re.fullmatch(r"rank_(\d+)", path.name)
        if named and int(named.group(1)) != rank:
            sibling = path.parent / f"rank_{rank}"
            return sibling if sibling.is_dir() else None
        return path
    return None


def find_resume_checkpoint(value, *, output_dir: Path, rank: int, key: str = "resume_training",
                           origin: str | None = None, warn: Warn | None = None) -> Checkpoint | None:
    """The checkpoint a run resumes from, verified.

    value True: the newest intact checkpoint in output_dir/checkpoint/rank_<rank>, or None when
    that folder holds none at all (a first launch under a requeue script that always passes
    --resume starts from step 0). A string is a checkpoint (.ckpt or .json manifest), a rank
    folder, a checkpoint/ folder or an output_dir; MindFormers' form, a bare file name, means
    that file in output_dir/checkpoint/rank_<rank>. An explicit checkpoint must be intact: no
    fallback to another step when the user named one.
    """
    fix_fresh = "drop --resume (and resume_training) to start from step 0"

    def newest(folder: CheckpointFolder) -> Checkpoint:
        problems: list[str] = []
        found = folder.newest_intact(problems.append)
        if found is None:
            raise UserError("no intact checkpoint in this folder:\n  " + "\n  ".join(problems),
                            file=str(folder.path), key=key,
                            fix=f"restore a checkpoint from a backup, or {fix_fresh}")
        for text in problems:
            if warn:
                warn(text)
        return found

    if value is True:
        folder = CheckpointFolder(checkpoint_dir(output_dir, rank))
        if not folder.checkpoints() and folder.latest_stem() is None:
            return None
        return newest(folder)
    path = Path(os.path.expanduser(str(value)))
    if not path.exists() and os.sep not in str(value):
        path = checkpoint_dir(output_dir, rank) / str(value)
    if not path.exists():
        raise UserError("the checkpoint to resume from does not exist", file=str(path), key=key,
                        fix=f"pass an output_dir, a checkpoint/rank_N folder or a .ckpt file "
                            f"written by petrun; or {fix_fresh}")
    if path.is_dir():
        rank_folder = _rank_folder_of(path, rank)
        if rank_folder is None:
            raise UserError(f"no petrun checkpoints for rank {rank} here", file=str(path), key=key,
                            fix=f"point --resume at the run's output_dir (it holds checkpoint/rank_"
                                f"{rank}/) or at a .ckpt written by petrun; or {fix_fresh}")
        return newest(CheckpointFolder(rank_folder))
    # A single file: the adapter .ckpt, the state .ckpt or the manifest of one checkpoint.
    stem, folder_path = path.stem, path.parent
    if folder_path.name == STATE_DIR:
        folder_path = folder_path.parent
    named = _STEM.match(stem)
    if named and int(named.group("rank")) != rank:
        # rank 0's file named on every rank's command line: each rank takes its own.
        stem = f"{named.group('prefix')}_rank_{rank}-{named.group('epoch')}_{named.group('step')}"
        if re.fullmatch(r"rank_\d+", folder_path.name):
            folder_path = folder_path.parent / f"rank_{rank}"
    ckpt = CheckpointFolder(folder_path).get(stem)
    if ckpt is None:
        raise UserError("this is not a checkpoint written by petrun (no readable manifest "
                        f"{folder_path / (stem + '.json')} beside it)", file=str(path), key=key,
                        fix="resume needs the optimizer state petrun saves with each checkpoint; "
                            "to start from these weights instead, pass them as load_checkpoint "
                            f"and {fix_fresh}")
    problem = ckpt.problem()
    if problem:
        raise UserError(f"checkpoint {stem} is damaged: {problem}", file=str(path), key=key,
                        fix="resume from an earlier checkpoint (pass its folder to --resume to "
                            "pick the newest intact one)")
    return ckpt
