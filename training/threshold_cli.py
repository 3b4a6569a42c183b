"""`fraudstream threshold`: the alert threshold set by what an alert costs against the fraud it saves.

    fraudstream threshold --cost-per-alert 5                      # the bundle's validation stretch
    fraudstream threshold --cost-per-alert 5 --capacity 200 --data data/creditcard.csv
    fraudstream threshold --cost-per-alert 5 --backtest bt-20261130-...   # a finished run's rows

Sweeps every threshold (each distinct score) over rows whose label is known: the
validation stretch of `--data` (the same time-ordered 60/20/20 cut training makes, scored
by `--model`, default `FRAUDSTREAM_MODEL_PATH`), or a backtest run's stored rows with their
known label (`known_labels`: reviews and chargebacks over inline labels). Per threshold:
alerts (and per day of data), frauds caught, fraud amount caught and missed, review cost
and net savings (`core.costs`). Prints the thresholds around the best (within the
analysts' capacity) and the current one, and saves the curve as a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import numpy as np

from core.costs import SavingsCurve, data_days, sweep
from core.dataset import SAMPLE_PATH, CsvSchemaError, load_csv
from core.db.urls import asyncpg_dsn
from core.ensemble import BundleError, Ensemble
from core.runtime.stack import NotConfigured, resolve_database_url
from core.settings import Settings
from training.cli import register
from training.rethreshold import rethresholded
from training.split import time_split

#: Rows of the table either side of the best and the current threshold.
AROUND = 3

_BACKTEST_ROWS = """
SELECT s.score, t.amount, t.time, k.label
FROM known_labels k
JOIN scores s ON s.run_id = k.run_id AND s.id = k.id
JOIN transactions t ON t.run_id = k.run_id AND t.id = k.id
WHERE k.run_id = $1
"""


@dataclass(frozen=True)
class Labelled:
    """Rows with a known label, their scores, and the threshold they were alerted at."""

    what: str
    labels: np.ndarray
    scores: np.ndarray
    amounts: np.ndarray
    times: np.ndarray
    current: float | None
    bundle: Path | None = None  # the bundle that scored them (what --activate re-thresholds)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value >= 0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraudstream threshold",
        description="Sweep alert thresholds by net savings (fraud amount caught - alerts x cost per alert).",
    )
    parser.add_argument(
        "--cost-per-alert", type=_non_negative, help="default: FRAUDSTREAM_COST_PER_ALERT (required one way)"
    )
    parser.add_argument(
        "--capacity", type=_positive_int, help="alerts per day (default: FRAUDSTREAM_ANALYST_CAPACITY)"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data", type=Path, help="CSV: sweep its validation stretch (default: the shipped sample)"
    )
    source.add_argument("--backtest", metavar="RUN", help="sweep a finished backtest run's stored rows")
    parser.add_argument("--model", type=Path, help="bundle scoring --data (default: FRAUDSTREAM_MODEL_PATH)")
    parser.add_argument("--plot", type=Path, default=Path("threshold-savings.png"), help="where the PNG goes")
    parser.add_argument(
        "--activate",
        action="store_true",
        help="make the best threshold live: a new model version differing only in its threshold, "
        "registered and promoted (the scorer and the API follow without a restart)",
    )
    parser.add_argument(
        "--out", type=Path, help="where --activate writes the new bundle (default: beside the model's)"
    )
    return parser


def validation_rows(data_path: Path, model: Path) -> Labelled:
    ensemble = Ensemble.load(model)
    part = time_split(load_csv(data_path)).validation
    scores = ensemble.score(part.raw).score
    return Labelled(
        f"the validation stretch of {data_path.name} ({len(part):,} rows), model {ensemble.version}",
        part.labels.astype(bool),
        scores,
        part.raw[:, -1],
        part.raw[:, 0],
        ensemble.threshold,
        model,
    )


async def backtest_rows(database_url: str, run_id: str) -> Labelled:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        run = await conn.fetchrow("SELECT threshold, bundle_path FROM backtest_runs WHERE id = $1", run_id)
        if run is None:
            raise LookupError(f"no backtest run {run_id!r} (fraudstream backtest --list)")
        threshold = run["threshold"]
        rows = await conn.fetch(_BACKTEST_ROWS, run_id)
    finally:
        await conn.close()
    columns = np.array([tuple(r) for r in rows], dtype=np.float64).reshape(-1, 4)
    return Labelled(
        f"backtest run {run_id} ({len(rows):,} labelled rows)",
        columns[:, 3].astype(bool),
        columns[:, 0],
        columns[:, 1],
        columns[:, 2],
        float(threshold),
        Path(run["bundle_path"]),
    )


def table_rows(curve: SavingsCurve, best: int | None, current: int | None) -> list[int]:
    """The indices worth printing: around the best and the current threshold, and the ends."""
    n = len(curve)
    keep = {0, n - 1}
    for centre in (best, current):
        if centre is not None:
            keep.update(range(max(0, centre - AROUND), min(n, centre + AROUND + 1)))
    return sorted(i for i in keep if 0 <= i < n)


def format_table(curve: SavingsCurve, best: int | None, current: int | None) -> list[str]:
    per_day = curve.alerts_per_day
    lines = [
        f"{'':2}{'threshold':>10} {'alerts':>9} {'per day':>9} {'caught':>7} {'amount caught':>14} "
        f"{'amount missed':>14} {'review cost':>12} {'net savings':>13}"
    ]
    previous = -1
    for i in table_rows(curve, best, current):
        if i != previous + 1 and previous >= 0:
            lines.append(f"{'':2}{'...':>10}")
        mark = ("*" if i == best else " ") + ("<" if i == current else " ")
        lines.append(
            f"{mark}{curve.thresholds[i]:>10.4f} {curve.alerts[i]:>9,} "
            f"{(per_day[i] if per_day is not None else float('nan')):>9,.1f} {curve.frauds_caught[i]:>7,} "
            f"{curve.amount_caught[i]:>14,.2f} {curve.amount_missed[i]:>14,.2f} {curve.review_cost[i]:>12,.2f} "
            f"{curve.net_savings[i]:>13,.2f}"
        )
        previous = i
    lines.append("  * best within capacity   < current threshold")
    return lines


def save_plot(
    curve: SavingsCurve, path: Path, *, current: float | None, best: int | None, capacity: int | None
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(curve.thresholds, curve.net_savings, color="#4c78a8", lw=2, label="net savings")
    ax.axhline(0, color="#d1d5db", lw=1)
    if current is not None:
        ax.axvline(current, color="#54a24b", ls="--", lw=2, label=f"current {current:.3f}")
    if best is not None:
        ax.axvline(
            curve.thresholds[best], color="#e45756", ls=":", lw=2, label=f"best {curve.thresholds[best]:.3f}"
        )
    if capacity is not None and curve.days:
        fitting = curve.thresholds[curve.within(capacity)]
        if fitting.size:
            ax.axvspan(
                0, fitting.min(), color="#9d9da1", alpha=0.15, label=f"over capacity ({capacity:,}/day)"
            )
    ax.set_xlim(0, 1)
    ax.set_xlabel("threshold (alert at score >= threshold)")
    ax.set_ylabel(f"net savings (cost {curve.cost_per_alert:g} per alert)")
    ax.legend(loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    cost = args.cost_per_alert if args.cost_per_alert is not None else settings.cost_per_alert
    if cost is None:
        print("error: give --cost-per-alert or set FRAUDSTREAM_COST_PER_ALERT", file=sys.stderr)
        return 2
    capacity = args.capacity if args.capacity is not None else settings.analyst_capacity
    try:
        if args.backtest:
            rows = asyncio.run(backtest_rows(resolve_database_url(settings), args.backtest))
        else:
            rows = validation_rows(args.data or SAMPLE_PATH, args.model or settings.model_path)
    except (LookupError, NotConfigured, CsvSchemaError, BundleError, OSError, asyncpg.PostgresError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if rows.labels.size == 0:
        print(f"error: no rows with a known label in {rows.what}", file=sys.stderr)
        return 1
    curve = sweep(rows.labels, rows.scores, rows.amounts, cost, days=data_days(rows.times))
    best = curve.best(capacity)
    current = curve.index_of(rows.current) if rows.current is not None else None
    print(f"net savings by threshold on {rows.what}, {curve.days:.2f} days of data, {curve.frauds:,} frauds")
    print(f"cost per alert {cost:g}" + (f", capacity {capacity:,} alerts/day" if capacity else ""))
    for line in format_table(curve, best, current):
        print(line)
    if best is None:
        print("no threshold saves more than it costs" + (" within capacity" if capacity else ""))
    else:
        point = curve.at(best)
        print(
            f"best: {point.threshold:.4f}: net savings {point.net_savings:,.2f} with {point.alerts:,} alerts "
            f"({point.frauds_caught:,} of {curve.frauds:,} frauds)"
        )
    print(f"curve saved to {save_plot(curve, args.plot, current=rows.current, best=best, capacity=capacity)}")
    if not args.activate:
        return 0
    if best is None:
        print("error: nothing to activate: no threshold saves more than it costs", file=sys.stderr)
        return 1
    return activate(rows, curve, best, cost, capacity, args.out)


def activate(
    rows: Labelled, curve: SavingsCurve, best: int, cost: float, capacity: int | None, out: Path | None
) -> int:
    """Write the re-thresholded bundle and promote it; 0 when it is live."""
    point = curve.at(best)
    source = rows.bundle
    if source is None:
        print("error: --activate needs the bundle that scored these rows", file=sys.stderr)
        return 1
    target = out or source.parent / f"{source.name}-threshold-{point.threshold:.6f}"
    why = {
        "threshold": point.threshold,
        "cost_per_alert": cost,
        "capacity_per_day": capacity,
        "net_savings": point.net_savings,
        "alerts": point.alerts,
        "swept": rows.what,
    }
    try:
        manifest = rethresholded(source, target, point.threshold, why)
    except (BundleError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    registered, message = register(target, activate=True)
    print(f"new version {manifest['version']} (threshold {point.threshold:.6f}) in {target}: {message}")
    return 0 if registered else 1


if __name__ == "__main__":
    sys.exit(main())
