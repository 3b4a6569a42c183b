"""When each event may leave: as fast as possible, at a fixed rate, or on the data's own clock.

Pacing is a pure schedule (event index and data time → seconds after the start), so the
replay loop only compares it with the wall clock and sleeps when it is ahead. Keeping the
schedule absolute (not "sleep 1/rate after each send") means small oversleeps do not add
up: a replay at 2,000/s stays at 2,000/s over minutes.

    >>> Pacing(rate=2000).due(4000, 0.0)
    2.0
    >>> Pacing(speed=60).due(0, 3600.0, first_time=0.0)
    60.0
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pacing:
    """At most one of `rate` (events per second) and `speed` (data seconds per wall second)."""

    rate: float | None = None
    speed: float | None = None

    def __post_init__(self) -> None:
        if self.rate is not None and self.speed is not None:
            raise ValueError("give a rate or a speed, not both")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        if self.speed is not None and not self.speed > 0:
            raise ValueError(f"speed must be positive, got {self.speed}")

    @property
    def unlimited(self) -> bool:
        return self.rate is None and self.speed is None

    def due(self, index: int, data_time: float, *, first_time: float = 0.0) -> float:
        """Seconds after the start at which event number `index` (0-based) should be sent."""
        if self.rate is not None:
            return index / self.rate
        if self.speed is not None:
            return max(0.0, data_time - first_time) / self.speed
        return 0.0

    def describe(self) -> str:
        if self.rate is not None:
            return f"{self.rate:g} events/s"
        if self.speed is not None:
            return f"{self.speed:g}x the data's clock"
        return "as fast as possible"
