"""The machine line every benchmark table prints, and the load average it ran under.

Machines of this kind differ by about 3x in single-thread speed, and this one is shared, so
a figure means little without the speed of the machine and how busy it was. The line times
two fixed kernels:

- a pure-Python loop of 10 million additions (about 2.0 s on the slower machines of this
  kind, well under 1 s on fast ones): what the event loop, decoding and Faust run at;
- a numpy kernel, 20 products of a fixed 512 x 512 float64 matrix: what BLAS runs at.

Each is timed twice and the faster run kept, so a moment of contention does not mark the
machine slow. `MachineLine.on_reference(seconds)` scales a time measured here to the slower
machine (`REFERENCE_LOOP_SECONDS`), for targets that are stated there.

    >>> line = MachineLine(python_loop_seconds=1.0, numpy_kernel_seconds=0.4, cpus=2)
    >>> line.on_reference(30.0)
    60.0
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import numpy as np

LOOP_ITERATIONS = 10_000_000
#: The 10M-iteration loop's time on the slower machine of this kind, where targets hold.
REFERENCE_LOOP_SECONDS = 2.0


def python_loop(iterations: int = LOOP_ITERATIONS) -> int:
    """The fixed pure-Python kernel: a sum in a for loop."""
    total = 0
    for i in range(iterations):
        total += i
    return total


def numpy_kernel(size: int = 512, products: int = 20) -> float:
    """The fixed numpy kernel: matrix products of one seeded matrix (scaled to stay finite)."""
    matrix = np.random.default_rng(0).standard_normal((size, size)) / np.sqrt(size)
    result = matrix
    for _ in range(products):
        result = matrix @ result
    return float(result[0, 0])


def _best_of(runs: int, kernel) -> float:  # noqa: ANN001 - a zero-argument callable
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        kernel()
        best = min(best, time.perf_counter() - started)
    return best


@dataclass(frozen=True)
class MachineLine:
    """How fast this machine runs the two fixed kernels (seconds) and how many CPUs it has."""

    python_loop_seconds: float
    numpy_kernel_seconds: float
    cpus: int

    def on_reference(self, seconds: float) -> float:
        """`seconds` measured here, scaled to the slower reference machine by the Python loop."""
        return seconds * REFERENCE_LOOP_SECONDS / self.python_loop_seconds

    def describe(self) -> str:
        return (
            f"machine: 10M-iteration Python loop {self.python_loop_seconds:.2f} s "
            f"(reference slower machine ~{REFERENCE_LOOP_SECONDS:.1f} s), "
            f"numpy kernel (20 x 512^2 matmul) {self.numpy_kernel_seconds:.2f} s, {self.cpus} CPUs"
        )


def measure_machine(runs: int = 2) -> MachineLine:
    """Time both kernels (best of `runs`) on this machine now."""
    return MachineLine(
        python_loop_seconds=round(_best_of(runs, python_loop), 3),
        numpy_kernel_seconds=round(_best_of(runs, numpy_kernel), 3),
        cpus=os.cpu_count() or 1,
    )


class LoadSampler:
    """Samples the 1-minute load average every `interval` seconds on a thread, while a `with` block runs.

    A thread, not a task, so one sampler serves synchronous and asyncio code alike.
    `before` is the load when sampling started: what other work the machine already had.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.before = os.getloadavg()[0]
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.interval)

    def __enter__(self) -> LoadSampler:
        self.before = os.getloadavg()[0]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def describe(self) -> str:
        if not self.samples:
            return f"load average (1 min) {self.before:.2f} at start"
        return (
            f"load average (1 min) {self.before:.2f} at start, during the run "
            f"mean {np.mean(self.samples):.2f}, max {max(self.samples):.2f}"
        )
