"""Delayed ground truth for `fraudstream replay --label-delay SECONDS`.

In real card fraud the truth about a transaction arrives days later (a chargeback), not
with it. With a delay, the replay publishes each transaction without its label and holds
the label back until the data clock (the `Time` of the rows being published) passes the
row's time plus the delay; then it goes out on the labels topic as a `chargeback` verdict.
Labels are released in due order, interleaved with the transactions in data-time order,
whatever the pacing. Each one carries a stable id (`core.labels.chargeback_label_id`),
so replaying the same file again publishes the same verdicts and stores nothing twice.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

from core.labels import LabelEvent, LabelSource, build_label, chargeback_label_id

#: Who a replayed chargeback says decided it.
CHARGEBACK_WHO = "replay"


@dataclass
class DelayedLabels:
    """Labels waiting for the data clock: `hold` each row's label, `due` releases them in order."""

    delay: float
    run_id: str | None = None
    _heap: list[tuple[float, int, str, int]] = field(default_factory=list)
    _order: int = 0

    def __post_init__(self) -> None:
        if not self.delay >= 0 or self.delay == float("inf"):
            raise ValueError(f"the label delay must be a finite number of seconds >= 0, got {self.delay}")

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, transaction_id: str, data_time: float, label: int | None) -> None:
        """Keep a row's label until `data_time + delay` (an unlabelled row has nothing to hold)."""
        if label is None:
            return
        heapq.heappush(self._heap, (data_time + self.delay, self._order, transaction_id, int(label)))
        self._order += 1

    def due(self, clock: float) -> list[LabelEvent]:
        """The labels whose time has come when the data clock reads `clock`, earliest first."""
        released = []
        while self._heap and self._heap[0][0] <= clock:
            released.append(self._event(heapq.heappop(self._heap)))
        return released

    def rest(self) -> list[LabelEvent]:
        """Every label still held, earliest first (the data ran out before they were due)."""
        return self.due(float("inf"))

    def _event(self, held: tuple[float, int, str, int]) -> LabelEvent:
        _, _, transaction_id, label = held
        return build_label(
            transaction_id=transaction_id,
            run_id=self.run_id,
            label=label,
            source=LabelSource.CHARGEBACK,
            who=CHARGEBACK_WHO,
            label_id=chargeback_label_id(transaction_id, self.run_id),
            decided_at=time.time(),
        )
