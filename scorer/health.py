"""Whether a scorer worker is doing its job, from what it knows about itself (no I/O here).

The worker tells `WorkerHealth` what happens (events taken, a batch acknowledged, a write
that failed or succeeded, its partitions and their lag) and asks `status()` what that
means. Stalled is a fact, not a guess:

- work is waiting (events consumed and not yet acknowledged, or lag on its partitions)
  and no batch has been completed for `stall_seconds`; or
- writes keep failing: `failures_to_stall` attempts in a row (PostgreSQL down, a sink
  that refuses everything), whatever the clock says.

An idle worker (nothing consumed, no lag) is ok however long ago it last stored.

    >>> now = [0.0]
    >>> health = WorkerHealth(stall_seconds=30, clock=lambda: now[0], wall=lambda: 1.7e9 + now[0])
    >>> health.ready(partitions={0, 1})
    >>> health.taken(100)
    >>> now[0] = 31.0
    >>> health.status()
    ('stalled', '100 events consumed and not acknowledged, 0 waiting on its partitions: no batch done for 31 s')
    >>> health.acked(100, {0: 100})
    >>> health.status()
    ('ok', None)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

STARTING, OK, STALLED, STOPPED = "starting", "ok", "stalled", "stopped"


@dataclass
class WorkerHealth:
    stall_seconds: float
    failures_to_stall: int = 3
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    pending: int = 0  # consumed, not yet acknowledged
    last_store_at: float | None = None  # wall clock of the last successful write
    partitions: frozenset[int] = frozenset()
    lag: dict[int, int] = field(default_factory=dict)  # per partition: end offset - next offset to ack
    next_offsets: dict[int, int] = field(default_factory=dict)  # per partition: after the last ack
    failures: int = 0  # write attempts failed in a row
    last_error: str | None = None
    model_version: str | None = None  # the active model's
    shadow_version: str | None = None  # the shadow's the registry names (None: no shadow)
    shadow_problem: str | None = None  # why that shadow is not scoring here (None when it is)
    maintenance_at: float | None = None  # wall clock of this worker's last maintenance pass that acted
    maintenance_problem: str | None = None  # why the last maintenance pass failed (None when it did not)
    _ready: bool = False
    _stopped: bool = False
    _busy_since: float | None = None  # when work (pending or lag) last went from none to some
    _last_progress: float = field(default=0.0)

    def __post_init__(self) -> None:
        self._last_progress = self.clock()

    # -- what happened ----------------------------------------------------------------

    def ready(self, partitions: set[int] | frozenset[int]) -> None:
        """Partitions assigned: from now on the worker is expected to make progress."""
        self._ready = True
        self.partitions = frozenset(partitions)
        self.lag = {p: n for p, n in self.lag.items() if p in self.partitions}
        self.next_offsets = {}  # another worker may have moved them: the committed offsets say where
        self._update_busy()

    def taken(self, count: int) -> None:
        self.pending += count
        self._update_busy()

    def acked(self, count: int, next_offsets: Mapping[int, int]) -> None:
        """A batch is done: its events acknowledged; `next_offsets` per partition after it."""
        self.pending -= count
        self.next_offsets.update(next_offsets)
        self._last_progress = self.clock()
        self._update_busy()

    def write_succeeded(self) -> None:
        self.last_store_at = self.wall()
        self.failures = 0
        self.last_error = None

    def write_failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error

    def observe_lag(self, lag: Mapping[int, int]) -> None:
        self.lag = {p: n for p, n in lag.items() if p in self.partitions}
        self._update_busy()

    def stopped(self) -> None:
        self._stopped = True

    # -- what it means ----------------------------------------------------------------

    @property
    def total_lag(self) -> int | None:
        return sum(self.lag.values()) if self.lag else None

    def status(self) -> tuple[str, str | None]:
        """(state, reason): starting | ok | stalled (with why) | stopped."""
        if self._stopped:
            return STOPPED, None
        if self.failures >= self.failures_to_stall:
            return STALLED, f"writes keep failing ({self.failures} attempts in a row): {self.last_error}"
        if not self._ready:
            return STARTING, None
        if self._busy_since is not None:
            idle = self.clock() - max(self._busy_since, self._last_progress)
            if idle > self.stall_seconds:
                return STALLED, (
                    f"{self.pending} events consumed and not acknowledged, {self.total_lag or 0} waiting "
                    f"on its partitions: no batch done for {idle:.0f} s"
                )
        return OK, None

    def _update_busy(self) -> None:
        busy = self.pending > 0 or bool(self.total_lag)
        if not busy:
            self._busy_since = None
        elif self._busy_since is None:
            self._busy_since = self.clock()
