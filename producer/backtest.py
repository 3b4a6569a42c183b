"""Backtests: replay a window of history through the live scoring path, as a tagged run.

A run is a row in `backtest_runs` (model version, bundle, threshold, window, status). Its
events carry the run id, so the scorer scores them with the run's bundle and threshold
into run-scoped rows that never mix with live scores. When every event of the window is
scored the run is finished and its metrics (overall and per hour of data) are stored.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import numpy as np

from core.costs import alert_budget, data_days, precision_at_capacity, savings_at
from core.db.registry import register_model
from core.ensemble import Ensemble
from core.metrics import average_precision, confusion

HOUR = 3600.0


@dataclass(frozen=True)
class RunSpec:
    bundle: Path
    time_from: float
    time_to: float


def new_run_id() -> str:
    return f"bt-{uuid.uuid4().hex[:12]}"


async def create_run(conn: asyncpg.Connection, spec: RunSpec, ensemble: Ensemble, run_id: str) -> None:
    """Register the bundle (not activating it) and the run, before any event is sent."""
    await register_model(conn, ensemble, spec.bundle.resolve(), activate=False)
    await conn.execute(
        "INSERT INTO backtest_runs (id, model_version, bundle_path, threshold, time_from, time_to, status, "
        "started_at) VALUES ($1, $2, $3, $4, $5, $6, 'running', now())",
        run_id,
        ensemble.version,
        str(spec.bundle.resolve()),
        ensemble.threshold,
        spec.time_from,
        spec.time_to,
    )


async def scored_count(conn: asyncpg.Connection, run_id: str) -> int:
    return await conn.fetchval("SELECT count(*) FROM scores WHERE run_id = $1", run_id)


async def wait_until_scored(
    conn: asyncpg.Connection,
    run_id: str,
    expected: int,
    *,
    stall_timeout: float = 120.0,
    poll: float = 0.5,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Wait until `expected` rows of the run are stored; fail when nothing moves for `stall_timeout`."""
    last, last_change = -1, time.monotonic()
    while True:
        count = await scored_count(conn, run_id)
        if on_progress is not None:
            on_progress(count)
        if count >= expected:
            return count
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > stall_timeout:
            raise TimeoutError(
                f"backtest {run_id}: {count} of {expected} transactions scored and no progress for "
                f"{stall_timeout:.0f}s: is a scorer running (fraudstream scorer / fraudstream up)?"
            )
        await asyncio.sleep(poll)


def backtest_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    amounts: np.ndarray,
    times: np.ndarray,
    threshold: float,
    *,
    cost_per_alert: float | None = None,
    capacity: int | None = None,
) -> dict:
    """Metrics of one run: overall and per hour of data. Pure: arrays in, plain numbers out.

    With a cost per alert: the review cost and net savings at the run's threshold; with a
    daily capacity too: the precision of the top `capacity x days` alerts (what a team
    that reviews that many sees), beside AUPRC.
    """
    overall = _slice_metrics(labels, scores, amounts, threshold)
    if cost_per_alert is not None:
        at = savings_at(labels, scores, amounts, threshold, cost_per_alert)
        overall |= {
            "cost_per_alert": float(cost_per_alert),
            "review_cost": at.review_cost,
            "net_savings": at.net_savings,
        }
    days = data_days(times)
    if capacity is not None and days is not None:
        budget = alert_budget(capacity, days)
        overall |= {
            "capacity_per_day": capacity,
            "alert_budget": budget,
            "precision_at_capacity": precision_at_capacity(labels, scores, budget),
        }
    hours = np.floor(times / HOUR).astype(np.int64)
    per_hour = []
    for hour in np.unique(hours):
        mask = hours == hour
        per_hour.append(
            {"hour": int(hour), **_slice_metrics(labels[mask], scores[mask], amounts[mask], threshold)}
        )
    return {"threshold": threshold, **overall, "per_hour": per_hour}


def _slice_metrics(labels: np.ndarray, scores: np.ndarray, amounts: np.ndarray, threshold: float) -> dict:
    labels = labels.astype(bool)
    alerts = scores >= threshold
    m = confusion(labels, scores, threshold)  # works on empty slices too: all counts 0
    ap = average_precision(labels, scores) if labels.any() else float("nan")
    return {
        "transactions": int(labels.size),
        "frauds": int(labels.sum()),
        "alerts": m["tp"] + m["fp"],
        "frauds_caught": m["tp"],
        "frauds_missed": m["fn"],
        "false_alerts": m["fp"],
        "amount_caught": float(amounts[alerts & labels].sum()),
        "amount_missed": float(amounts[~alerts & labels].sum()),
        "precision": float(m["precision"]),
        "recall": float(m["recall"]),
        "f1": float(m["f1"]),
        "auprc": None if np.isnan(ap) else float(ap),
    }


async def run_arrays(conn: asyncpg.Connection, run_id: str) -> tuple[np.ndarray, ...]:
    """(labels, scores, amounts, times) of a run's labelled rows, from the database."""
    rows = await conn.fetch(
        "SELECT t.label, s.score, t.amount, t.time FROM scores s JOIN transactions t USING (run_id, id) "
        "WHERE s.run_id = $1 AND t.label IS NOT NULL",
        run_id,
    )
    if not rows:
        return tuple(np.empty(0) for _ in range(4))
    data = np.array([tuple(row) for row in rows], dtype=np.float64)
    return data[:, 0], data[:, 1], data[:, 2], data[:, 3]


async def finish_run(
    conn: asyncpg.Connection,
    run_id: str,
    threshold: float,
    expected: int,
    *,
    cost_per_alert: float | None = None,
    capacity: int | None = None,
) -> dict:
    labels, scores, amounts, times = await run_arrays(conn, run_id)
    metrics = backtest_metrics(
        labels, scores, amounts, times, threshold, cost_per_alert=cost_per_alert, capacity=capacity
    )
    await conn.execute(
        "UPDATE backtest_runs SET status = 'finished', finished_at = now(), expected_count = $2, "
        "metrics = $3::jsonb WHERE id = $1",
        run_id,
        expected,
        json.dumps(metrics),
    )
    return metrics


async def fail_run(conn: asyncpg.Connection, run_id: str, reason: str) -> None:
    await conn.execute(
        "UPDATE backtest_runs SET status = 'failed', finished_at = now(), error = $2 WHERE id = $1",
        run_id,
        reason,
    )


async def load_run(conn: asyncpg.Connection, run_id: str) -> dict | None:
    row = await conn.fetchrow("SELECT * FROM backtest_runs WHERE id = $1", run_id)
    if row is None:
        return None
    run = dict(row)
    if isinstance(run.get("metrics"), str):
        run["metrics"] = json.loads(run["metrics"])
    return run
