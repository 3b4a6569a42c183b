"""Looking at processes from a test: their signal state and whether any of them is left."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import psutil


def _signal_mask(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1], 16)
    raise LookupError(field)


def catches_signal(pid: int, signum: int) -> bool:
    """The process has installed a handler for `signum` (it is past its start-up)."""
    return bool(_signal_mask(pid, "SigCgt") >> (signum - 1) & 1)


def signal_pending(pid: int, signum: int) -> bool:
    """`signum` was sent but not delivered yet (a second one now would merge with it)."""
    return any(_signal_mask(pid, field) >> (signum - 1) & 1 for field in ("SigPnd", "ShdPnd"))


def alive(pids: Iterable[int]) -> list[psutil.Process]:
    """The processes among `pids` still running (zombies count as gone)."""
    running = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
        except psutil.NoSuchProcess:
            continue
    return running
