"""Wall and CPU seconds per training stage, for the manifest and the bench's timing table.

    timer = StageTimer()
    with timer.stage("scale"):
        ...
    timer.summary()   # {"wall_seconds", "cpu_seconds", "cores_busy", "stages": [...]}

Stages may run on several threads at once (the two XGBoost models train side by side), so
each stage's CPU is the CPU time of the thread that ran it (`time.thread_time`), not of the
process: overlapping stages would otherwise count each other's work. The run's total CPU
is the process's (user + system, every thread), and `cores_busy` = total CPU ÷ wall says
how many cores the run kept busy on average. A stage that starts OpenMP helper threads
(XGBoost with `nthread` > 1) has their time in the total but not in its own row.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class StageTime:
    """One stage: where it ran, when it started (seconds after the run started), how long, how much CPU."""

    stage: str
    thread: str
    start_seconds: float
    wall_seconds: float
    cpu_seconds: float


class StageTimer:
    """Collects `StageTime`s from any thread; the clock starts when the timer is made."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._cpu_started = time.process_time()
        self._lock = threading.Lock()
        self.stages: list[StageTime] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage `name` on the calling thread."""
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            record = StageTime(
                stage=name,
                thread=threading.current_thread().name,
                start_seconds=round(start - self._started, 3),
                wall_seconds=round(time.perf_counter() - start, 3),
                cpu_seconds=round(time.thread_time() - cpu, 3),
            )
            with self._lock:
                self.stages.append(record)

    def elapsed(self) -> float:
        return time.perf_counter() - self._started

    def summary(self) -> dict[str, Any]:
        """Totals so far and every stage in the order it started."""
        wall = self.elapsed()
        cpu = time.process_time() - self._cpu_started
        with self._lock:
            stages = sorted(self.stages, key=lambda s: s.start_seconds)
        return {
            "wall_seconds": round(wall, 3),
            "cpu_seconds": round(cpu, 3),
            "cores_busy": round(cpu / wall, 2) if wall > 0 else 0.0,
            "stages": [asdict(s) for s in stages],
        }
