"""The exception types the CLI turns into exit codes.

UserError is the one type for mistakes a user can fix: the CLI prints it as a short paragraph and
exits 2 with no traceback (`--debug` shows it). Interrupted is a training run stopped by a signal
after saving (exit 128 + signal). Anything else escaping the CLI is a bug in petrun and keeps its
traceback.
"""
from __future__ import annotations

import signal


class UserError(Exception):
    key_in_message = True  # subclasses whose message already names keys turn this off

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.key = key
        self.fix = fix

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
        if self.key and self.key_in_message:
            where.append(f"key '{self.key}'")
        head = f"{': '.join(where)}: " if where else ""
        text = head + self.message
        if self.fix:
            text += f"\nFix: {self.fix}"
        return text


class Interrupted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint. The CLI exits 128 + signal."""

    def __init__(self, signum: int, step: int, checkpoint: str | None, summary: dict):
        self.signum, self.step, self.checkpoint, self.summary = signum, step, checkpoint, summary
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}")
