"""`fraudstream backtest`: how would this model (and threshold) have done on that stretch?

    fraudstream backtest --model models/default --from 100000 --to 172800
    fraudstream backtest --model models/default --from 100000 --to 172800 --threshold 0.5
    fraudstream backtest --compare bt-1a2b3c4d5e6f bt-0f9e8d7c6b5a
    fraudstream backtest --list

The window is replayed through Kafka with a run id on each event; a running scorer
(`fraudstream up` or `fraudstream scorer`) scores it with the run's bundle and threshold.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import asyncpg
from aiokafka.errors import KafkaError
from tqdm import tqdm

from core.dataset import SAMPLE_PATH, CsvSchemaError
from core.db.urls import asyncpg_dsn
from core.ensemble import BundleError, Ensemble
from core.runtime.stack import NotConfigured, resolve_endpoints
from core.settings import Settings
from producer.backtest import (
    RunSpec,
    create_run,
    fail_run,
    finish_run,
    load_run,
    new_run_id,
    wait_until_scored,
)
from producer.cli import seconds_argument
from producer.replay import replay


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"a threshold is a probability in (0, 1), got {text}")
    return value


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--speed takes 'max' or a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--speed must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fraudstream backtest", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--model", type=Path, help="model bundle directory to backtest")
    mode.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="show two runs side by side")
    mode.add_argument("--list", action="store_true", help="list the runs")
    parser.add_argument(
        "--from", dest="time_from", type=seconds_argument, default=0.0, help="first data second"
    )
    parser.add_argument(
        "--to", dest="time_to", type=seconds_argument, default=None, help="end data second (exclusive)"
    )
    parser.add_argument("--threshold", type=_threshold, help="alert threshold (default: the bundle's)")
    parser.add_argument(
        "--speed", type=_speed, default=None, help="'max' (default) or data seconds per second"
    )
    parser.add_argument("--data", type=Path, default=None, help="CSV to replay (default: the shipped sample)")
    parser.add_argument(
        "--stall-timeout", type=float, default=120.0, help="give up after this long without progress"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.model is not None and args.time_to is not None and args.time_to <= args.time_from:
        build_parser().error(f"--to ({args.time_to}) must be after --from ({args.time_from})")
    settings = Settings()
    try:
        endpoints = resolve_endpoints(settings)
    except NotConfigured as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        if args.compare:
            return asyncio.run(_compare(endpoints.database_url, *args.compare))
        if args.list:
            return asyncio.run(_list(endpoints.database_url))
        return asyncio.run(_backtest(args, settings, endpoints.bootstrap_servers, endpoints.database_url))
    except KeyboardInterrupt:
        print("interrupted: the run is marked failed", file=sys.stderr)
        return 130
    except (OSError, asyncpg.PostgresError) as error:
        print(f"error: the database is unreachable or refused: {error}", file=sys.stderr)
        return 1


async def _backtest(args: argparse.Namespace, settings: Settings, bootstrap: str, database_url: str) -> int:
    try:
        ensemble = Ensemble.load(args.model)
    except BundleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.threshold is not None:
        ensemble = ensemble.with_threshold(args.threshold)
    time_to = args.time_to if args.time_to is not None else float("inf")
    spec = RunSpec(args.model, args.time_from, time_to)
    run_id = new_run_id()
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await create_run(conn, spec, ensemble, run_id)
        try:
            return await _replay_and_score(args, settings, bootstrap, conn, ensemble, run_id)
        except BaseException as error:  # Ctrl-C, a broker gone: the run must not stay "running"
            await asyncio.shield(fail_run(conn, run_id, f"{type(error).__name__}: {error}"))
            raise
    finally:
        await conn.close()


async def _replay_and_score(
    args: argparse.Namespace,
    settings: Settings,
    bootstrap: str,
    conn: asyncpg.Connection,
    ensemble: Ensemble,
    run_id: str,
) -> int:
    """Replay the window with the run id, wait until all of it is scored, store the metrics."""
    print(
        f"backtest {run_id}: model {ensemble.version}, threshold {ensemble.threshold:.4f}, "
        f"window [{args.time_from:g}, {args.time_to if args.time_to is not None else float('inf'):g}) s"
    )
    try:
        report = await replay(
            args.data or SAMPLE_PATH,
            bootstrap_servers=bootstrap,
            topic=settings.topic_transactions,
            speed=args.speed,
            time_from=args.time_from,
            time_to=args.time_to,
            run_id=run_id,
        )
    except (CsvSchemaError, OSError, KafkaError) as error:
        await fail_run(conn, run_id, str(error))
        print(f"error: {error}", file=sys.stderr)
        return 2
    if report.sent == 0:
        await fail_run(conn, run_id, "the window holds no transactions")
        print(f"backtest {run_id} failed: the window holds no transactions", file=sys.stderr)
        return 1
    with tqdm(total=report.sent, desc="scored", unit="tx") as bar:

        def progress(count: int) -> None:
            bar.update(count - bar.n)

        try:
            await wait_until_scored(
                conn, run_id, report.sent, stall_timeout=args.stall_timeout, on_progress=progress
            )
        except TimeoutError as error:
            await fail_run(conn, run_id, str(error))
            print(f"error: {error}", file=sys.stderr)
            return 1
    await finish_run(
        conn,
        run_id,
        ensemble.threshold,
        report.sent,
        cost_per_alert=settings.cost_per_alert,
        capacity=settings.analyst_capacity,
    )
    print(render_run(await load_run(conn, run_id)))
    return 0


def render_run(run: dict) -> str:
    m = run["metrics"] or {}
    lines = [
        f"run {run['id']}  model {run['model_version']}  threshold {run['threshold']:.4f}  status {run['status']}",
        "",
        f"{'metric':<16}{'value':>14}",
        *(f"{name:<16}{_fmt(m.get(name)):>14}" for name in _METRICS),
        # with FRAUDSTREAM_COST_PER_ALERT / _ANALYST_CAPACITY set when the run finished
        *(f"{name:<16}{_fmt(m.get(name)):>14}" for name in _COST_METRICS if name in m),
        "",
        f"{'hour':>4} {'tx':>7} {'frauds':>6} {'alerts':>6} {'caught':>6} {'missed':>6} {'precision':>9} "
        f"{'recall':>6} {'amount caught':>13} {'amount missed':>13}",
    ]
    for h in m.get("per_hour", []):
        lines.append(
            f"{h['hour']:>4} {h['transactions']:>7} {h['frauds']:>6} {h['alerts']:>6} {h['frauds_caught']:>6} "
            f"{h['frauds_missed']:>6} {h['precision']:>9.3f} {h['recall']:>6.3f} {h['amount_caught']:>13.2f} "
            f"{h['amount_missed']:>13.2f}"
        )
    return "\n".join(lines)


_COST_METRICS = ("review_cost", "net_savings", "alert_budget", "precision_at_capacity")
_METRICS = (
    "transactions",
    "frauds",
    "alerts",
    "frauds_caught",
    "frauds_missed",
    "false_alerts",
    "precision",
    "recall",
    "f1",
    "auprc",
    "amount_caught",
    "amount_missed",
)


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


async def _compare(database_url: str, run_a: str, run_b: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        runs = [await load_run(conn, run_id) for run_id in (run_a, run_b)]
    finally:
        await conn.close()
    for run_id, run in zip((run_a, run_b), runs, strict=True):
        if run is None:
            print(f"error: no backtest run {run_id!r} (see fraudstream backtest --list)", file=sys.stderr)
            return 2
    print(render_comparison(*runs))
    return 0


def render_comparison(a: dict, b: dict) -> str:
    ma, mb = a["metrics"] or {}, b["metrics"] or {}
    rows = [
        ("model", a["model_version"][:14], b["model_version"][:14]),
        ("threshold", f"{a['threshold']:.4f}", f"{b['threshold']:.4f}"),
        ("window", f"{a['time_from']:g}-{a['time_to']:g}", f"{b['time_from']:g}-{b['time_to']:g}"),
        ("status", a["status"], b["status"]),
        *((name, _fmt(ma.get(name)), _fmt(mb.get(name))) for name in _METRICS),
    ]
    header = f"{'':<16}{a['id']:>18}{b['id']:>18}"
    return "\n".join([header, *(f"{name:<16}{va:>18}{vb:>18}" for name, va, vb in rows)])


async def _list(database_url: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await conn.fetch(
            "SELECT id, model_version, threshold, time_from, time_to, status, created_at FROM backtest_runs "
            "ORDER BY created_at DESC"
        )
    finally:
        await conn.close()
    if not rows:
        print("no backtest runs yet")
    for r in rows:
        print(
            f"{r['id']}  {r['status']:<9} model {r['model_version'][:12]}  threshold {r['threshold']:.4f}  "
            f"window {r['time_from']:g}-{r['time_to']:g}  {r['created_at']:%Y-%m-%d %H:%M}"
        )
    return 0
