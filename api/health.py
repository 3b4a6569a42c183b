"""Health that tells the truth: is the API able to serve, and is the stream being scored?

`GET /health` answers one of three states:

- `ok` (200): the database answers, a model is served, the broker is reachable, and at
  least one scorer worker is alive, healthy and on the champion.
- `degraded` (200, with `reasons`): the API serves, but something a person should look
  at is wrong: a scorer worker says it is stalled; no worker has sent a heartbeat lately
  (`FRAUDSTREAM_HEALTH_WORKER_STALE_SECONDS`, 15 s); a live worker, or this API, still
  scores with another version than the champion longer than a model reload takes; no
  champion is registered (the fallback bundle is served); the broker is unreachable.
- `unavailable` (503): the API cannot serve: the database is down, or there is no model.

The scorer workers' side comes from their heartbeat rows (`scorer_workers`, migration
0005); ages are computed by PostgreSQL's clock, so the API's clock does not matter.
`assess` is a pure function of what was observed, so every state is testable alone.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.broker import BrokerMonitor
from api.schemas import Health, ScorerHealth, WorkerHealth
from api.serving import ServedModels

_WORKERS = text("""
SELECT worker_id, host, pid, state, reason, model_version, pending_events, lag, assigned_partitions,
       heartbeat_at, last_store_at, extract(epoch FROM now() - heartbeat_at) AS heartbeat_age,
       extract(epoch FROM now() - last_store_at) AS store_age
FROM scorer_workers ORDER BY worker_id
""")
_CHAMPION_SINCE = text("""
SELECT extract(epoch FROM now() - max(e.at)) FROM model_events e
JOIN model_versions m ON m.version = e.version AND m.active WHERE e.action = 'promoted'
""")

#: How long a database check may take before it counts as "not answering".
DATABASE_CHECK_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Observed:
    """Everything `/health` looked at, at one moment."""

    database: str  # 'ok' or why not
    broker: str  # 'ok', 'not configured' or why not
    served: str | None  # the version this API serves
    model_error: str | None  # why no model (or not the champion) is served
    champion: str | None  # the registry's champion
    shadow: str | None
    champion_age: float | None  # seconds since the champion was promoted
    served_behind: float | None  # seconds this API has served another version than the champion
    from_fallback: bool  # serving the unregistered fallback bundle
    workers: list[WorkerHealth] | None  # None when the database could not be read


def assess(seen: Observed, *, stale_seconds: float, reload_seconds: float) -> Health:
    """The health verdict: status, the parts that are not ready, and the reasons, in words."""
    not_ready = [part for part, ok in (("database", seen.database == "ok"), ("model", seen.served)) if not ok]
    reasons: list[str] = []
    if seen.database != "ok":
        reasons.append(f"database {seen.database}")
    if seen.served is None:
        reasons.append(f"no model is served: {seen.model_error or 'unknown reason'}")
    grace = 2 * reload_seconds  # a worker polls the registry, then reports at its next heartbeat
    if seen.from_fallback:
        reasons.append(
            f"no champion is registered: serving {seen.served} from the fallback bundle, unregistered"
        )
    if seen.served_behind is not None and seen.served_behind > grace:
        reasons.append(f"this API serves {seen.served}, not the champion {seen.champion}: {seen.model_error}")
    if seen.broker not in ("ok", "not configured"):
        reasons.append(f"broker {seen.broker}")
    scorer = None
    if seen.workers is not None:
        live = [w for w in seen.workers if w.heartbeat_age_s <= stale_seconds and w.state != "stopped"]
        for worker in live:
            if worker.state == "stalled":
                reasons.append(
                    f"scorer worker {worker.worker_id} is stalled: {worker.reason or 'no reason given'}"
                )
            if (
                seen.champion is not None
                and worker.model_version is not None
                and worker.model_version != seen.champion
                and seen.champion_age is not None
                and seen.champion_age > grace
            ):
                reasons.append(
                    f"scorer worker {worker.worker_id} scores with {worker.model_version}, "
                    f"the champion {seen.champion} since {seen.champion_age:.0f} s"
                )
        if not live:
            newest = min((w.heartbeat_age_s for w in seen.workers), default=None)
            last = f"; the last heartbeat was {newest:.0f} s ago" if newest is not None else ""
            reasons.append(f"no live scorer worker (no heartbeat in the last {stale_seconds:.0f} s){last}")
        scorer = ScorerHealth(live=len(live), workers=seen.workers)
    status = "unavailable" if not_ready else ("degraded" if reasons else "ok")
    return Health(
        status=status,
        database=seen.database,
        model=seen.served,
        champion=seen.champion,
        shadow=seen.shadow,
        broker=seen.broker,
        scorer=scorer,
        not_ready=not_ready,
        reasons=reasons,
    )


def _seconds(value: object) -> float | None:
    return float(value) if value is not None else None


async def read_database(engine: AsyncEngine) -> tuple[str, list[WorkerHealth] | None, float | None]:
    """('ok' or why not, the workers' heartbeat rows, seconds since the champion's promotion)."""
    try:
        async with asyncio.timeout(DATABASE_CHECK_SECONDS), engine.connect() as conn:
            rows = (await conn.execute(_WORKERS)).all()
            champion_age = (await conn.execute(_CHAMPION_SINCE)).scalar()
    except Exception as exc:  # any failure means "not ready"; the message says which
        return f"unreachable: {type(exc).__name__}: {exc}"[:300], None, None
    workers = [
        WorkerHealth(
            worker_id=row.worker_id,
            host=row.host,
            pid=row.pid,
            state=row.state,
            reason=row.reason,
            model_version=row.model_version,
            pending_events=row.pending_events,
            lag=row.lag,
            assigned_partitions=row.assigned_partitions,
            heartbeat_at=row.heartbeat_at,
            last_store_at=row.last_store_at,
            heartbeat_age_s=float(row.heartbeat_age),
            last_store_age_s=_seconds(row.store_age),
        )
        for row in rows
    ]
    return "ok", workers, _seconds(champion_age)


async def observe(engine: AsyncEngine, models: ServedModels, broker: BrokerMonitor) -> Observed:
    (database, workers, champion_age), broker_status = await asyncio.gather(
        read_database(engine), broker.status()
    )
    served = models.champion
    head = models.head
    behind = time.monotonic() - models.behind_since if models.behind_since is not None else None
    return Observed(
        database=database,
        broker=broker_status,
        served=served.version if served is not None else None,
        model_error=models.error,
        champion=head.champion.version if head is not None and head.champion is not None else None,
        shadow=head.shadow.version if head is not None and head.shadow is not None else None,
        champion_age=champion_age,
        served_behind=behind,
        from_fallback=models.from_fallback,
        workers=workers,
    )
