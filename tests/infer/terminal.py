"""The real petrun CLI on a pseudo-terminal, for the chat tests that need stdin to be a TTY
(the >>> prompt, Ctrl-C and Ctrl-D as a terminal sends them)."""
from __future__ import annotations

import os
import select
import sys
import time

from tests.conftest import ROOT


class Terminal:
    def __init__(self, *args: str, env: dict | None = None):
        import pty
        self.pid, self.fd = pty.fork()
        if self.pid == 0:    # the child: `python -m petrun ARGS` on the terminal
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-m", "petrun", *args],
                      {**os.environ, **(env or {})})
        self.seen = b""

    def wait_for(self, needle: bytes, count: int = 1, timeout: float = 300) -> None:
        """Read the terminal until `needle` has appeared `count` times (assert, with all output)."""
        end = time.time() + timeout
        while self.seen.count(needle) < count and time.time() < end:
            if select.select([self.fd], [], [], 1)[0]:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:     # the child closed the terminal
                    break
        assert self.seen.count(needle) >= count, self.text()

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def exit_code(self, timeout: float = 120) -> int:
        """The child's exit code; a child still running after `timeout` s is killed and the
        test fails with what it printed (a hung chat must not hang the suite)."""
        end = time.time() + timeout
        while time.time() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            if select.select([self.fd], [], [], 0.5)[0]:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:
                    pass
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"still running after {timeout} s: {self.text()}")

    def text(self) -> str:
        return self.seen.decode(errors="replace")
