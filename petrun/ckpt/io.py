"""Checkpoint files: the .ckpt write and the naming rules every reader shares.

Writes are crash-safe (petrun/atomic.py). Reading and strict loading live in ckpt/load.py, the
checkpoint folders with manifests, the `latest` pointer and keep-last-N in ckpt/store.py
(write → folder layout → load: each imports only the ones before it).
"""
from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Iterable

from petrun.atomic import commit, tmp_name, write_error
from petrun.errors import UserError

# Entries a MindSpore/MindFormers training checkpoint carries besides network weights.
_TRAINING_STATE = re.compile(
    r"^(adam_m\.|adam_v\.|moment1\.|moment2\.|accu_grads\.|global_step$|epoch_num$|step_num$|"
    r"loss_scale$|scale_sense$|current_iterator_step$|last_overflow_iterator_step$|"
    r"learning_rate$|beta1_power$|beta2_power$"
    # MindFormers' P-Tuning v2 / prefix-tuning models keep their prefix token ids (a constant
    # arange(pre_seq_len), not trained) as a Parameter, so its whole-network checkpoints carry
    # it; petrun's prefix encoders need no such table (found by tests/oracle against 1.3.2).
    r"|(?:.+\.)?mindpet_delta_(?:ptuning2|prefixtuning)_prefix$)")

ADAPTER_PATTERN = "*mindpet_delta_*"  # every PET parameter carries this infix (MindFormers)


PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle")


def pickle_kind(path: str | Path) -> str | None:
    """What kind of Python pickle the file is (PyTorch's torch.save zip or a raw pickle), judged
    by its first bytes only; None for anything else. Nothing is unpickled."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:         # PROTO opcode, pickle protocols 2-5
        return "a Python pickle"
    if head == b"PK\x03\x04":
        import zipfile
        try:
            with zipfile.ZipFile(path) as z:
                if any(n.endswith(("data.pkl", ".pkl")) for n in z.namelist()):
                    return "a PyTorch torch.save file (a zip holding a pickle)"
        except (OSError, zipfile.BadZipFile):
            return None
    return None


def refuse_pickle(path: str | Path, key: str) -> None:
    """A UserError for a pickle: petrun never unpickles (loading a pickle runs any code it holds,
    so a downloaded .bin/.pt is a program, not weights)."""
    kind = pickle_kind(path)
    if kind is None:
        return
    raise UserError(f"this is {kind}; petrun never loads pickles, because unpickling runs any code "
                    "the file holds", file=str(path), key=key,
                    fix="get the safetensors version of the weights (HF: model.safetensors, PEFT: "
                        "adapter_model.safetensors, save_pretrained(safe_serialization=True)) "
                        "and convert it with `petrun ckpt convert` / `petrun ckpt import-peft`")


def is_training_state(name: str) -> bool:
    """Optimizer moments, step counters, loss scale, MindFormers' prefix token ids: entries that
    are not network weights."""
    return bool(_TRAINING_STATE.match(name))


def save_params(params: Iterable, path: str | Path, *, append: dict | None = None) -> Path:
    """Write Parameters (or {'name','data'} dicts) to `path` as a MindSpore .ckpt, crash-safely.

    A crash at any instant leaves either the previous file or the new one under `path`, never a
    partial file; the temporary file is removed on error.
    """
    import mindspore as ms

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, path.parent) from None
    tmp = tmp_name(path)
    if tmp.suffix != ".ckpt":   # MindSpore would append it and write elsewhere
        tmp = tmp.with_name(tmp.name + ".ckpt")
    save_list = list(params)
    try:
        with _without_mindspore_save_failure_log():
            ms.save_checkpoint(save_list, str(tmp), append_dict=append or None)
        commit(tmp, path)
    except OSError as e:
        raise write_error(e, path) from None
    finally:
        # MindSpore writes `tmp` via its own `<tmp stem>.tmp`; remove whichever survived an error.
        for leftover in (tmp, tmp.with_suffix(".tmp")):
            if leftover.exists():
                leftover.unlink()
    return path


class _DropSaveFailure(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to save the checkpoint file")


@contextlib.contextmanager
def _without_mindspore_save_failure_log():
    """MindSpore logs "[CRITICAL] Failed to save the checkpoint file ... Maybe don't have the
    permission to write files, or the disk space is insufficient" before re-raising any write
    error, whatever its cause (a full disk read as a permission problem). The exception still
    comes through; petrun's own message (write_error) names the real cause. Only that record is
    dropped, only while petrun saves."""
    try:
        from mindspore import log as ms_log
        logger = ms_log._get_logger()   # the one MindSpore logs through (name carries the pid)
    except (ImportError, AttributeError):
        yield
        return
    drop = _DropSaveFailure()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def refuse_existing(dst: Path, overwrite: bool, key: str = "--dst") -> None:
    """Outputs are replaced only when asked (as data prepare, ckpt shard and ckpt transform do)."""
    if Path(dst).exists() and not overwrite:
        raise UserError("the output already exists", file=str(dst), key=key,
                        fix=f"pass --overwrite or choose another {key}")
