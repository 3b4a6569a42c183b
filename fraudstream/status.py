"""`fraudstream status`: what the supervisor of a running stack says about its processes.

The supervisor of `fraudstream up` / `infra` keeps `status.json` in the state folder; this
prints it as a table: each process with its state, pid, uptime, restarts and last exit,
and how many events wait on the broker to be scored.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from core.runtime.processes import pid_alive
from fraudstream.supervisor import STATUS_FILE, describe_exit

#: Exit code when no stack runs on the state folder (LSB's "program is not running").
NOT_RUNNING = 3


def read_status(state_dir: Path) -> dict | None:
    """The running supervisor's status, or None when no stack runs on `state_dir`."""
    try:
        status = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return status if pid_alive(int(status.get("pid", -1))) else None


def duration(seconds: float) -> str:
    """
    >>> duration(42.4), duration(125), duration(7322)
    ('42s', '2m05s', '2h02m')
    """
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def render(status: dict, now: float) -> str:
    """The table `fraudstream status` prints."""
    rows = [("SERVICE", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT")]
    for service in status["services"]:
        started = service.get("started_at")
        last = service.get("last_reason") or (
            describe_exit(service["last_exit"]) if service.get("last_exit") is not None else ""
        )
        rows.append(
            (
                service["name"],
                service["state"],
                str(service["pid"] or "-"),
                duration(now - started) if started else "-",
                str(service["restarts"]),
                last or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        f"fraudstream stack, supervisor pid {status['pid']}"
        + (f", state folder {status['state_dir']}" if status.get("state_dir") else "")
    ]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    ]
    lag = status.get("lag") or {}
    if "events" in lag:
        lines.append(
            f"events on the broker not yet scored: {lag['events']:,} (measured {duration(now - lag['at'])} ago)"
        )
    if lag.get("error"):
        lines.append(f"the lag view cannot measure now: {lag['error']}")
    return "\n".join(line.rstrip() for line in lines)


def run_status(state_dir: Path) -> int:
    status = read_status(state_dir)
    if status is None:
        print(f"no fraudstream stack is running on {state_dir} (start one with `fraudstream up`)")
        return NOT_RUNNING
    print(render(status, time.time()))
    return 0
