"""The one exception type for mistakes a user can fix.

The CLI prints a UserError as a short paragraph and exits 2 with no traceback (`--debug` shows it).
Anything else escaping the CLI is a bug in petrun and keeps its traceback.
"""
from __future__ import annotations


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
