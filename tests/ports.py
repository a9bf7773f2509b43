"""TCP ports for tests that launch a job with a master port (issue 17, defect 7).

A port found free is closed again before the launcher's scheduler binds it, so another process can
take it in between. Two things make that rare and harmless here:
  - free_port() picks outside the kernel's ephemeral range (ip_local_port_range), so no outgoing
    connection of any process (MindSpore's workers connect to their scheduler) is handed it;
  - with_free_port() runs the job again on another port when its output says the port was taken
    (petrun launch's "port N on HOST is in use", or EADDRINUSE from a bind).
A Popen'ed job that a test interrupts cannot be re-run that way; it still gets a free_port().
"""
from __future__ import annotations

import random
import re
import socket
import subprocess
from typing import Callable

CLASH = re.compile(r"is in use \(another job|Address already in use|EADDRINUSE", re.IGNORECASE)


def _ephemeral() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            lo, hi = map(int, f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port nothing listens on now, below the ephemeral range when there is room there."""
    lo, _ = _ephemeral()
    low, high = (20000, lo - 1) if lo > 21000 else (1024 + 1, lo - 1)
    rng = random.SystemRandom()
    for _ in range(100):
        port = rng.randint(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:   # the whole low range busy: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_free_port(run: Callable[[int], subprocess.CompletedProcess], attempts: int = 3):
    """run(port) → CompletedProcess, again on a fresh port while its output reports the port
    taken (at most `attempts` runs)."""
    for attempt in range(attempts):
        result = run(free_port())
        text = (result.stdout or "") + (result.stderr or "")
        if result.returncode == 0 or not CLASH.search(text) or attempt == attempts - 1:
            return result
    raise AssertionError("unreachable")
