"""Where petrun keeps what it derives from data files: the tokenized raw records (data/ondemand.py)
and the record of files already verified readable (data/integrity.py). A module of its own so
both can ask without importing each other (tests/test_architecture.py forbids the circle).
"""
from __future__ import annotations

import os


def default_cache_dir() -> str:
    """$PETRUN_CACHE_DIR, else $XDG_CACHE_HOME/petrun/data, else ~/.cache/petrun/data."""
    if os.environ.get("PETRUN_CACHE_DIR"):
        return os.path.expanduser(os.environ["PETRUN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "petrun", "data")
