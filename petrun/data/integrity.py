"""Every record of a MindRecord file read once, in a child process, before a run relies on it.

A MindRecord data file whose pages were overwritten keeps a valid header and index, so opening it,
counting it and reading its first sample all succeed; MindSpore's reader then crashes the process
(SIGSEGV) when training reaches the damaged page, without a message. The header holds no checksum
of the pages, so the only check is to read them: verify_mindrecord() does that in a child process
(`python -m petrun.data.integrity FILE`), where a crash costs nothing but the child, and turns a
failure into a UserError naming the file.

The result is remembered per file, keyed by its path, size and modification time and those of its
.db index (in the data cache, $PETRUN_CACHE_DIR or ~/.cache/petrun/data, folder verified/), so
a dataset is read once, not before every run. A damaged file is never remembered. Files petrun
writes itself (mindrecord.write_mindrecord, so `petrun data prepare`) are remembered as written;
any later change to them (a new size or mtime) makes them be read again.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from typing import Sequence

from petrun.errors import UserError

_VERSION = 1


def _stamp(path: str) -> dict | None:
    """What identifies this version of the file and its index; None if either is missing."""
    out = {"path": os.path.realpath(path), "v": _VERSION}
    for suffix in ("", ".db"):
        try:
            st = os.stat(path + suffix)
        except OSError:
            return None
        out[f"size{suffix}"], out[f"mtime{suffix}"] = st.st_size, st.st_mtime_ns
    return out


def _cache_file(stamp: dict) -> str:
    from petrun.data.cache import default_cache_dir

    digest = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:32]
    return os.path.join(default_cache_dir(), "verified", digest + ".json")


def _remembered(stamp: dict) -> bool:
    try:
        with open(_cache_file(stamp), encoding="utf-8") as f:
            return json.load(f).get("stamp") == stamp
    except (OSError, ValueError):
        return False


def _remember(stamp: dict, rows: int) -> None:
    path = _cache_file(stamp)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"stamp": stamp, "rows": rows}, f)
        os.replace(tmp, path)
    except OSError:
        pass   # an unwritable cache only means reading the file again next time


def remember_written(files: Sequence[str], rows: int) -> None:
    """Record files this process has just written and committed whole as verified."""
    for path in files:
        stamp = _stamp(path)
        if stamp is not None:
            _remember(stamp, rows)


def _how_it_ended(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


def verify_mindrecord(files: Sequence[str], key: str) -> None:
    """Read every record of each data file once (child process, cached); UserError if one cannot
    be read to the end."""
    for path in files:
        stamp = _stamp(path)
        if stamp is None or _remembered(stamp):
            continue   # a missing .db is reported by the reader's own checks
        env = {**os.environ, "GLOG_v": "3", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run([sys.executable, "-m", "petrun.data.integrity", path],
                              capture_output=True, text=True, env=env)
        result = None
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith("{"):
                try:
                    result = json.loads(line)
                except ValueError:
                    pass
                break
        if proc.returncode == 0 and result and result.get("ok"):
            _remember(stamp, int(result["rows"]))
            continue
        if result and result.get("error"):
            detail = f"after {result.get('rows', 0)} record(s): {result['error']}"
        else:
            last = [x for x in proc.stderr.splitlines() if x.strip()][-1:] or [""]
            detail = (f"the reader crashed ({_how_it_ended(proc.returncode)}) reading its records"
                      + (f"; last words: {last[0].strip()[:200]}" if last[0] else ""))
        raise UserError(f"the MindRecord data is damaged: {detail}. Its header and index are "
                        "intact, so only reading every record finds this", file=path, key=key,
                        fix="re-create the file with `petrun data prepare` (or MindFormers' "
                            "preprocessing) from the source data, or restore it from a copy")


def _read_all(path: str) -> dict:
    """Child side: every record of one data file, in file order."""
    import mindspore.dataset as ds

    rows = 0
    try:
        data = ds.MindDataset([path], shuffle=False, num_parallel_workers=1)
        expected = int(data.get_dataset_size())
        for _ in data.create_tuple_iterator(num_epochs=1, output_numpy=True):
            rows += 1
    except Exception as e:   # noqa: BLE001  any reader error is the verdict
        msg = str(e).split("Dataset Pipeline Error Message:")[-1].strip(" -\n")
        return {"ok": False, "rows": rows, "error": (msg.splitlines() or [type(e).__name__])[0]}
    if rows != expected:
        return {"ok": False, "rows": rows,
                "error": f"the index promises {expected} records, the pages hold {rows}"}
    return {"ok": True, "rows": rows}


if __name__ == "__main__":
    print(json.dumps(_read_all(sys.argv[1])), flush=True)
