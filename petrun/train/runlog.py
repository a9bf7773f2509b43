"""A run's text logs, per rank, as MindFormers keeps them: output/log/rank_N/info.log (what the
console shows, plus warnings) and error.log (warnings and errors, with the traceback of an
internal error). Both rotate (logging.handlers.RotatingFileHandler) so a long run cannot fill
the disk with them.
"""
from __future__ import annotations

import logging
import re
from logging.handlers import RotatingFileHandler
from pathlib import Path

from petrun.errors import Interrupted, UserError

_MARKUP = re.compile(r"\[/?[a-z][a-z0-9 _#.=-]*\]")   # rich markup such as [yellow]...[/yellow]
MAX_BYTES = 20 * 1024 * 1024
BACKUPS = 5


class RunLog:
    def __init__(self, log_dir: Path, rank: int):
        # One logger per folder: two recipes in one process (tests, the Python API) never share
        # handlers, and nothing reaches the root logger (the console has its own output).
        self.logger = logging.getLogger(f"petrun.run.{log_dir.resolve()}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        fmt = logging.Formatter(f"%(asctime)s rank {rank} %(levelname)s %(message)s")
        self.handlers = []
        for name, level in (("info.log", logging.INFO), ("error.log", logging.WARNING)):
            h = RotatingFileHandler(log_dir / name, maxBytes=MAX_BYTES, backupCount=BACKUPS,
                                    encoding="utf-8")
            h.setLevel(level)
            h.setFormatter(fmt)
            self.logger.addHandler(h)
            self.handlers.append(h)

    def info(self, text: str) -> None:
        self.logger.info(_MARKUP.sub("", text))

    def warning(self, text: str) -> None:
        self.logger.warning(_MARKUP.sub("", text))

    def failed(self, error: BaseException) -> None:
        """A user error is one line with its fix; a stop on a signal is no error (info.log says
        it); anything else keeps its traceback."""
        if isinstance(error, Interrupted):
            return
        if isinstance(error, UserError):
            self.logger.error("%s", error)
        elif isinstance(error, Exception):
            self.logger.error("internal error", exc_info=error)

    def close(self) -> None:
        for h in self.handlers:
            self.logger.removeHandler(h)
            h.close()
