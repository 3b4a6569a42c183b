"""Where an event's latency goes: the wall clock at each stage of its batch, since it was produced.

Each batch carries a `BatchStamps`: when the consumer's fetch returned each record, when
the agent took the batch, when it was scored, when its write began (after the write
before it), when PostgreSQL committed it (durable: this is "stored") and when it was
acknowledged. After the acknowledgement, `StageLatency.observe_batch` adds every row's
time since its producer's `produced_at` at each stage to one histogram per stage,
`fraudstream_stage_seconds{stage=...}`, vectorised (one numpy pass per stage and batch,
not a Python call per row). The difference of two stages is the time spent between them:
that is how to tell a fetch wait from a queue wait from a write queue from a commit.

The producer's clock and the worker's are compared, so on separate machines their offset
is in every figure (on one machine it is not).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

#: The stages, in the order a batch passes them.
STAGES = ("fetched", "taken", "scored", "write_started", "stored", "acked")

#: Upper bounds (seconds): 2 ms steps to 60 ms, 5 ms to 150 ms, then coarser.
STAGE_BUCKETS: tuple[float, ...] = tuple(
    round(ms / 1000.0, 4)
    for ms in [
        *range(2, 62, 2),
        *range(65, 155, 5),
        *range(175, 325, 25),
        400,
        500,
        750,
        1000,
        2000,
        5000,
        10000,
        30000,
        60000,
    ]
)


@dataclass(slots=True)
class BatchStamps:
    """Wall clock (epoch s) at each stage of one batch; `fetched` per message position."""

    fetched: np.ndarray | None = None
    taken: float | None = None
    scored: float | None = None
    write_started: float | None = None
    stored: float | None = None
    acked: float | None = None

    @classmethod
    def fetched_together(cls, count: int, at: float | None = None) -> BatchStamps:
        """A batch whose records all came from one fetch (a plain `getmany`), taken at once."""
        at = time.time() if at is None else at
        return cls(fetched=np.full(count, at), taken=at)

    def since_produced(
        self, produced_at: Sequence[float | None], positions: Sequence[int]
    ) -> Iterator[tuple[str, np.ndarray]]:
        """(stage, seconds since each row was produced) for every stage stamped; rows without a
        producer timestamp are left out."""
        produced = np.asarray(produced_at, dtype=np.float64)  # None becomes NaN
        known = np.isfinite(produced)
        if not known.any():
            return
        produced = produced[known]
        for stage in STAGES:
            value = getattr(self, stage)
            if value is None:
                continue
            if isinstance(value, np.ndarray):
                at = value[np.asarray(positions, dtype=np.intp)][known]
            else:
                at = value
            yield stage, np.maximum(at - produced, 0.0)


class StageLatency(Collector):
    """One histogram per stage, kept as numpy counts and exposed as `fraudstream_stage_seconds`."""

    name = "fraudstream_stage_seconds"

    def __init__(self, buckets: Sequence[float] = STAGE_BUCKETS) -> None:
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.counts = {stage: np.zeros(len(self.bounds) + 1, dtype=np.int64) for stage in STAGES}
        self.sums = dict.fromkeys(STAGES, 0.0)

    def observe(self, stage: str, seconds: np.ndarray) -> None:
        """Add every value of `seconds` to `stage`'s histogram (a value equal to a bound falls in it)."""
        if not len(seconds):
            return
        index = np.searchsorted(self.bounds, seconds, side="left")
        self.counts[stage] += np.bincount(index, minlength=len(self.bounds) + 1)
        self.sums[stage] += float(np.sum(seconds))

    def observe_batch(
        self, stamps: BatchStamps, groups: Iterable[tuple[Sequence[float | None], Sequence[int]]]
    ) -> None:
        """Every row of the batch's groups ((produced_at, positions) each), at every stage stamped."""
        for produced_at, positions in groups:
            for stage, seconds in stamps.since_produced(produced_at, positions):
                self.observe(stage, seconds)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            self.name,
            "Time from the producer's timestamp to the end of each stage of the event's batch: "
            "fetched, taken (by the agent), scored, write_started, stored (committed), acked",
            labels=["stage"],
        )
        for stage in STAGES:
            cumulative = np.cumsum(self.counts[stage]).tolist()
            buckets = [
                (repr(bound), count)
                for bound, count in zip(self.bounds.tolist(), cumulative[:-1], strict=True)
            ]
            buckets.append(("+Inf", cumulative[-1]))
            family.add_metric([stage], buckets, self.sums[stage])
        yield family
