"""CPU seconds per process group, for benchmarks on a shared machine.

Wall-clock rates move with whatever else runs on the machine; the CPU seconds each of our
processes spends per event do not (much). `CpuMeter` sums user + system time over each
group's process tree (a PostgreSQL server with its backends, a worker, the broker) so a
benchmark can report CPU seconds per 100,000 events beside its rates, and the load
average it ran under.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import psutil


def _tree_seconds(pid: int, *, children: bool) -> float:
    """User + system CPU seconds of `pid` and, when `children`, of its descendants.

    Descendants that already exited count too (their time is in their parent's
    `children_*` once reaped): PostgreSQL ends a backend with each closed connection.
    """
    try:
        root = psutil.Process(pid)
        processes = [root, *(root.children(recursive=True) if children else ())]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
        if children:
            total += times.children_user + times.children_system
    return total


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds per group at one instant, and the 1-minute load average then."""

    seconds: dict[str, float]
    load: float


class CpuMeter:
    """Samples CPU seconds of named process groups: {name: (pid, include_children)}."""

    def __init__(self, groups: Mapping[str, tuple[int, bool]]) -> None:
        self.groups = dict(groups)

    def sample(self) -> CpuSample:
        return CpuSample(
            {name: _tree_seconds(pid, children=kids) for name, (pid, kids) in self.groups.items()},
            os.getloadavg()[0],
        )


def per_events(before: CpuSample, after: CpuSample, events: int, per: int) -> dict[str, float]:
    """CPU seconds per `per` events of each group between two samples (and their total)."""
    scale = per / max(events, 1)
    used = {name: (after.seconds[name] - before.seconds.get(name, 0.0)) * scale for name in after.seconds}
    used["total"] = sum(used.values())
    return used


def per_100k(before: CpuSample, after: CpuSample, events: int) -> dict[str, float]:
    """CPU seconds per 100,000 events of each group between two samples (and their total)."""
    return per_events(before, after, events, 100_000)


def cpu_budget(target: float, baseline_rate: float, per: int) -> float:
    """CPU seconds all of the machine's CPUs may spend on `per` events for a rate of `target`
    x `baseline_rate` (events/s): a ratio target's budget. NaN without a baseline."""
    return (os.cpu_count() or 1) * per / (target * baseline_rate) if baseline_rate else float("nan")
