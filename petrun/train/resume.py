"""Resume and stop: what a training run needs to continue step-exactly after it stops.

A petrun checkpoint's manifest (ckpt/store.py) is the progress record: step, epoch, batches of the
epoch already trained, the data's files and order, the RNG states, the config. This module turns it
back into a position (Progress), checks that this run may continue from it (check_compatible), has
data-parallel ranks agree on one step (agree_on_step), puts the saved weights and optimizer state
back (assign) and the generators (restore_rng), and handles SIGTERM/SIGINT so a stopped run saves
first (StopOnSignal). The recipe
(train/recipe.py) calls these at its restore and save steps.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from petrun.errors import UserError

# Config keys whose change makes a checkpoint's data cursor or optimizer state meaningless.
RESUME_MUST_MATCH = ("model", "seed", "runner_config.batch_size",
                     "runner_config.gradient_accumulation_steps", "train_dataset.batch_size",
                     "train_dataset.seed", "train_dataset.drop_remainder",
                     "train_dataset.data_loader.shuffle", "optimizer.type",
                     "runner_wrapper.scale_sense")
RESUME_IGNORED = ("resume_training", "output_dir")


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict) and node:
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(node, list) and node:
        out = {}
        for i, v in enumerate(node):
            out.update(_flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: node}


def _under(key: str, roots) -> bool:
    return any(key == r or key.startswith(r + ".") for r in roots)


@dataclass(frozen=True)
class Progress:
    """Where a run continues: after global `step`, in `epoch` (1-based), with `skip_batches` of
    that epoch already trained."""
    step: int = 0
    epoch: int = 1
    skip_batches: int = 0

    @classmethod
    def from_manifest(cls, m: dict, steps_per_epoch: int) -> "Progress":
        if int(m["step_in_epoch"]) >= steps_per_epoch:
            return cls(int(m["step"]), int(m["epoch"]) + 1, 0)   # saved at the end of its epoch
        return cls(int(m["step"]), int(m["epoch"]), int(m["batches_in_epoch"]))


def progress_record(cfg, *, step: int, epoch: int, step_in_epoch: int, accum: int,
                    consumed_samples: int, data: dict, **fields) -> dict:
    """The manifest a checkpoint saves: where the run is (from_manifest reads it back), the data
    and its order, the RNG states, versions and the config (check_compatible compares them)."""
    from petrun.ckpt.run_manifest import versions
    return {"step": step, "epoch": epoch, "step_in_epoch": step_in_epoch,
            "batches_in_epoch": step_in_epoch * accum, "consumed_samples": consumed_samples,
            **fields, "data": data, "rng": capture_rng(), "versions": versions(),
            "config_hash": cfg.hash(), "config": json.loads(json.dumps(cfg.data, default=str)),
            "finite": True}


def load_state(parts) -> None:
    """Read each (what, path, targets, cell) checkpoint file and assign it exactly."""
    import mindspore as ms
    for what, path, targets, cell in parts:
        try:
            values = ms.load_checkpoint(str(path))
        except (ValueError, RuntimeError, OSError) as e:
            raise UserError(f"cannot read checkpoint: {str(e).splitlines()[0][:200]}",
                            file=str(path), key="resume_training",
                            fix="resume from an earlier checkpoint") from None
        assign(values, targets, cell, what, path)


def check_compatible(m: dict, where: Path, *, cfg, world_size: int, data_files: list,
                     order_digest: Callable[[int], str], warn: Callable[[str], None]) -> None:
    """Refuse a resume whose checkpoint (manifest `m`, at `where`) another world size, changed
    must-match keys, other data or another data order would make meaningless; warn about the
    other config changes, which apply from here on."""
    fresh = "or start a new run without --resume (into another --output_dir)"
    if int(m.get("world_size", 1)) != world_size:
        raise UserError(f"the checkpoint was written by {m.get('world_size')} data-parallel "
                        f"ranks, this run has {world_size}", file=str(where),
                        key="parallel_config.data_parallel",
                        fix=f"resume with {m.get('world_size')} ranks (each rank's data cursor "
                            f"belongs to its shard), {fresh}")
    old, new = _flatten(m.get("config") or {}), _flatten(json.loads(json.dumps(cfg.data, default=str)))
    changed = sorted(k for k in set(old) | set(new)
                     if old.get(k) != new.get(k) and not _under(k, RESUME_IGNORED))
    hard = [k for k in changed if _under(k, RESUME_MUST_MATCH)]
    if hard:
        k = hard[0]
        raise UserError(f"{k} is {new.get(k)!r} but the checkpoint was trained with {old.get(k)!r}"
                        + (f" (and {len(hard) - 1} more: {', '.join(hard[1:4])})" if len(hard) > 1 else ""),
                        file=cfg.origin(k), key=k,
                        fix=f"resume with the checkpoint's value (see {where}), {fresh}")
    data = m.get("data") or {}
    old_files = [(f.get("bytes"), f.get("sha256")) for f in data.get("files", [])]
    if old_files != [(f["bytes"], f["sha256"]) for f in data_files]:
        key = "train_dataset.data_loader.dataset_dir"
        raise UserError("the training data differs from the data this checkpoint was trained on "
                        "(file sizes or SHA-256 changed), so its data cursor would repeat or "
                        "skip samples", file=cfg.origin(key), key=key,
                        fix=f"resume with the original data (listed in {where}), {fresh}")
    if data.get("order_sha256") != order_digest(int(m["epoch"])):
        raise UserError("this run would read the epoch in a different order than the run that "
                        "wrote the checkpoint (was numpy upgraded?)", file=str(where),
                        key="train_dataset.data_loader.shuffle",
                        fix=f"resume with the numpy version recorded in {where}, {fresh}")
    if changed:
        warn(f"config differs from the checkpoint's in {', '.join(changed[:6])}"
                  + (f" (+{len(changed) - 6} more)" if len(changed) > 6 else "")
                  + "; the new values apply from here on")


def assign(values: dict, targets: list, cell, what: str, path: Path) -> None:
    """Put a checkpoint's `values` into `targets` (Parameters of `cell`), exactly: the same names
    and shapes, or a UserError saying what does not fit."""
    import mindspore as ms
    values = {n: v for n, v in values.items() if n not in ("epoch_num", "step_num")}
    want = {p.name: p for p in targets}
    missing, unexpected = sorted(set(want) - set(values)), sorted(set(values) - set(want))
    if missing or unexpected:
        parts = ([f"{len(missing)} missing, e.g. {', '.join(missing[:3])}"] if missing else []) + \
                ([f"{len(unexpected)} unexpected, e.g. {', '.join(unexpected[:3])}"] if unexpected else [])
        raise UserError(f"the checkpoint's {what} does not fit this model: {'; '.join(parts)}",
                        file=str(path), key="model.model_config.pet_config",
                        fix="resume with the model and pet_config that wrote the checkpoint")
    for n, v in values.items():
        if tuple(v.shape) != tuple(want[n].shape):
            raise UserError(f"the checkpoint's {what} has {n} of shape {tuple(v.shape)}, this "
                            f"model needs {tuple(want[n].shape)}", file=str(path),
                            key="model.model_config",
                            fix="resume with the model size and pet_config that wrote the checkpoint")
    not_loaded, _ = ms.load_param_into_net(cell, values, strict_load=True)
    if set(not_loaded) & set(values):
        raise UserError(f"MindSpore did not load {sorted(set(not_loaded) & set(values))[:3]}",
                        file=str(path), fix="report this as a petrun bug")


def agree_on_step(mine, store, rank: int, *, explicit: bool, warn: Callable[[str], None]):
    """Data-parallel ranks must resume from the same step, or their AllReduces pair up
    different steps. A kill can land while one rank has renamed its newest checkpoint into
    place and another has not: then every rank resumes from the newest step all of them hold."""
    from petrun.parallel.context import gather_ints
    steps = [s[0] for s in gather_ints([mine.step if mine is not None else -1])]
    if len(set(steps)) == 1:
        return mine
    table = ", ".join(f"rank {r}: {'none' if s < 0 else f'step {s}'}" for r, s in enumerate(steps))
    if explicit:
        raise UserError(f"the ranks would resume from different steps ({table})",
                        key="resume_training",
                        fix="pass --resume with an output_dir (each rank picks its rank_N folder), "
                            "or checkpoints of one step for every rank")
    agreed = min(steps)
    if agreed < 0:
        warn(f"resume: not every rank holds a checkpoint ({table}); all start from step 0")
        return None
    same = [c for c in store.checkpoints() if c.step == agreed and c.problem() is None]
    if not same:
        raise UserError(f"rank {rank} has no intact checkpoint of step {agreed}, the newest "
                        f"step every rank holds ({table})", file=str(store.path),
                        key="resume_training",
                        fix="raise keep_checkpoint_max so ranks keep a common step, or start "
                            "a new run without --resume")
    if mine.step != agreed:
        warn(f"resume: rank {rank} uses its step-{agreed} checkpoint, the newest step "
             f"every rank holds ({table})")
    return same[0]


def capture_rng() -> dict:
    """Python, numpy and MindSpore generator state (the data order needs none of them), as
    hex strings of their uint32/uint8 words so the manifest stays readable."""
    import random

    import mindspore as ms
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": {"version": version, "words": np.asarray(internal, np.uint32).tobytes().hex(),
                       "gauss": gauss},
            "numpy": {"kind": kind, "keys": keys.astype(np.uint32).tobytes().hex(), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "mindspore": ms.get_rng_state().asnumpy().astype(np.uint8).tobytes().hex()}

def restore_rng(state: dict) -> None:
    import random

    import mindspore as ms

    def words(text, dtype):
        return np.frombuffer(bytes.fromhex(text), dtype=dtype)
    if "python" in state:
        s = state["python"]
        random.setstate((s["version"], tuple(int(w) for w in words(s["words"], np.uint32)),
                         s["gauss"]))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state((s["kind"], words(s["keys"], np.uint32).copy(), s["pos"],
                             s["has_gauss"], s["cached_gaussian"]))
    if "mindspore" in state:
        ms.set_rng_state(ms.Tensor(words(state["mindspore"], np.uint8).copy()))


def warn_dropout(model, warn: Callable[[str], None]) -> None:
    rates = sorted({float(c.p) for _, c in model.cells_and_names()
                    if type(c).__name__ == "Dropout" and getattr(c, "p", None)})
    if rates:
        warn(f"the model uses dropout (p={', '.join(map(str, rates))}): MindSpore 2.10 "
             "cannot save the random state of its CPU dropout kernels, so the masks from "
             "here on differ from an uninterrupted run's (everything else is restored "
             "exactly)")


class SetupInterrupted(KeyboardInterrupt):
    """SIGTERM during the setup, raised like Ctrl-C's KeyboardInterrupt."""
    signum = signal.SIGTERM


@contextmanager
def interrupt_setup():
    """While a run sets up (context, data, model load: minutes for a large model) a SIGTERM stops
    it at once, as Ctrl-C does, and the recipe says so (by default it would end the process
    without a word). Nothing is saved before the first step, so nothing can be half-written."""
    def stop(signum, frame):
        raise SetupInterrupted()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def stopped_before_training(signum: int, resumed_from, say: Callable[[str], None], summary: dict):
    """A signal before the first step of a run: nothing was trained and nothing saved. Says so,
    and returns the Interrupted the CLI turns into exit 128 + signal."""
    from petrun.errors import Interrupted
    if resumed_from is not None:
        kept = (f"the checkpoint it resumed from (step {resumed_from.step}) is untouched; "
                "continue with the same command (--resume)")
    else:
        kept = "no checkpoint was written; start again with the same command"
    say(f"stopped by {signal.Signals(signum).name} before the first training step: nothing was "
        f"trained or saved; {kept}.")
    return Interrupted(signum, resumed_from.step if resumed_from is not None else 0, None, summary)


# Test-only hook: "point:seconds" pauses a run there (saying so), so the signal tests hit a point
# between two log lines deterministically (tests/integration/test_signals.py).
PAUSE_AT_ENV = "PETRUN_TEST_PAUSE_AT"


def pause_for_tests(point: str, say: Callable[[str], None],
                    done: Callable[[], bool] = lambda: False) -> None:
    name, _, seconds = os.environ.get(PAUSE_AT_ENV, "").partition(":")
    if name != point:
        return
    import time
    say(f"test hook: pausing at {point}")
    end = time.monotonic() + float(seconds or 0)
    while time.monotonic() < end and not done():
        time.sleep(0.02)


class StopOnSignal:
    """The first SIGTERM/SIGINT asks the loop to save and stop at the next step boundary (a
    scheduler's preemption notice, or Ctrl-C), or, when it comes during the setup, to stop before
    the first step; a second one aborts at once, without saving.

    While a graph runs, MindSpore's own SIGINT handler is active and re-raises SIGINT as SIGTERM,
    so a Ctrl-C during a step is reported (and exits) as SIGTERM.
    """

    def __init__(self, note):
        self.note = note
        self.signum: int | None = None
        self.in_step = False   # set around a compiled step, where MindSpore owns SIGINT
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            name = signal.Signals(signum).name
            if signum == signal.SIGTERM and self.in_step:
                name += " (or Ctrl-C: during a step MindSpore turns it into SIGTERM)"
            self.note(f"{name}: saving a checkpoint after this step, then stopping (Ctrl-C again "
                      "to abort without saving)")
        else:
            # Abort at once, without unwinding: a KeyboardInterrupt raised inside a graph compile
            # is caught by MindSpore, which prints its analyzer stack dump and writes
            # analyze_fail.ir. Leaving now loses nothing saved: checkpoints are written
            # atomically (as a kill -9 finds them) and the output_dir lock is the kernel's.
            name = signal.Signals(signum).name
            try:
                sys.stderr.write(f"{name} again: aborted without saving; `latest` names the last "
                                 "checkpoint written (--resume continues from it)\n")
                sys.stderr.flush()
                sys.stdout.flush()
            finally:
                os._exit(128 + signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def reclaim(self) -> None:
        """Install our handlers again: a graph run leaves MindSpore's SIGINT handler in place."""
        if self._previous:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._handle)

    def before_training(self, resumed_from, summary: dict) -> None:
        """Right before the first step: a signal that came during the setup stops the run here."""
        pause_for_tests("first_step", self.note, lambda: self.signum is not None)
        if self.signum is not None:
            raise stopped_before_training(self.signum, resumed_from, self.note, summary)

    def stopped_after(self, step: int, total: int, summary: dict):
        """The run saved after `step` and stops: says so, returns the Interrupted to raise."""
        from petrun.errors import Interrupted
        path = summary["checkpoints"][-1]["path"]
        self.note(f"stopped by {signal.Signals(self.signum).name} after step {step}/{total}; "
                  f"checkpoint: {path}\nContinue with the same command plus --resume.")
        return Interrupted(self.signum, step, path, summary)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
