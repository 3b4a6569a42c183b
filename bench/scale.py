"""Scale benchmark: the write cost of the rollups (their fold included), and the analytics' read time as the history grows.

    python -m bench.scale --data data/creditcard.csv            # make bench-scale
    python -m bench.scale --steps 300000,3000000                # the quicker run
    python -m bench.scale --steps 300000 --batch 20,200,4000    # the write cost by batch size

One embedded PostgreSQL (migrated) is filled through the scorer's write path
(`core.db.store.store_new`, batches of the scorer's size, 4,000) with the Kaggle rows
repeated: each pass over the file is shifted by two days of data time and gets fresh ids,
so every batch covers a few minutes of data like a replay. A model bundle (`--model`, the
default one, or a quick one trained on the shipped sample) is registered as the champion,
so its reference bins are the drift rollup's; the scores stored are synthetic
(beta-distributed, its threshold): the bench measures the database, not the model.

At each step N (cumulative):

- **write cost**, per batch size of `--batch` (default 20, 200, 4000: the stream's batches are
  what has arrived, ~20 rows at 2,000 tx/s; 4,000 is a replay's): `--write-rows` more rows
  (default 200,000 per batch size) in alternating slices with the rollups off (the write
  statement without its narrow rollups, no fold) and on (the scorer's statement, and
  `rollup_fold()` from a second connection after every `--fold-rows` rows written, 2,000 by
  default: one fold a second at 2,000 tx/s, as the scorer's fold loop); for each, rows/s and the CPU seconds of
  the PostgreSQL backends serving the writes and the folds (user + system, from /proc) per
  100k rows. The rollup-free rows go to a run of their own that is deleted afterwards (with
  what an unmeasured fold counted of them). Everything else the write does (transactions,
  scores, run totals, review queue) is in both figures;
- **reads**: each analytics GET against a real API process with its result cache off
  (`--requests` each, one at a time, after a warm-up): p50 and p99;
- **refresh cost**: the CPU seconds the PostgreSQL backends serving the API spend per minute
  keeping the Live page fresh: its four requests every 1.5 s (its default refresh), cache
  off, after a warm-up, over `--refresh-seconds`;
- the database's size on disk.

The machine line and the load average come first and last: the machine is shared, and a
busy machine inflates every CPU figure (the ratio of the two write costs, taken in
alternating slices, is what to compare across runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import numpy as np
from tqdm import tqdm

from bench.api import _bundle, _request, _start_api, load
from bench.machine import LoadSampler, measure_machine
from bench.tables import markdown_table, ratio
from core.bundle_store import BundleStore
from core.dataset import SAMPLE_PATH, load_csv
from core.db.migrate import upgrade
from core.db.partitions import ensure_days
from core.db.registry import register_model
from core.db.store import ScoredRows, store_new
from core.ensemble import Ensemble
from core.runtime.postgres import EmbeddedPostgres
from core.runtime.processes import free_port, stop
from core.settings import Settings, settings_env

BATCH = 4000
FOLD = "SELECT rollup_fold()"
#: The rollups filled by the fold (migration 0014), not the write statement.
FOLDED = ("rollup_histograms", "rollup_score_hours", "rollup_drift")
OFF_RUN = "bench-scale-rollups-off"
TWO_DAYS = 172_800.0
#: Every analytics GET (the dashboard's pages ask for these), read with the API's result cache off.
READ_ENDPOINTS: tuple[str, ...] = (
    "/api/stats",
    "/api/stats?minutes=60",
    "/api/stats/timeseries?minutes=60&bucket_seconds=60",
    "/api/stats/timeseries?minutes=1440&bucket_seconds=900",
    "/api/alerts?limit=15",
    "/api/transactions?limit=100",
    "/api/transactions?limit=100&label=1",
    "/api/anomalies?limit=100",
    "/api/review/queue?limit=20",
    "/api/feedback/summary?hours=24",
    "/api/distributions/amount",
    "/api/distributions/feature/V14",
    "/api/distributions/feature/Time",
    "/api/distributions/feature/score",
    "/api/scatter?x=V14&y=V17&n=500",
    "/api/model/performance",
    "/api/model/savings?cost_per_alert=5",
    "/api/models",
    "/api/drift?hours=24",
    "/api/backtests",
)
#: What the Live page asks for on each refresh (`dashboard/pages/live.py`: its four callbacks,
#: fired together), and its default refresh period (`FRAUDSTREAM_DASHBOARD_REFRESH_MS`).
LIVE_PAGE: tuple[str, ...] = (
    "/api/stats",
    "/api/stats/timeseries",
    "/api/alerts?limit=15",
    "/api/feedback/summary?hours=24",
)
LIVE_REFRESH_SECONDS = 1.5


@dataclass
class Rows:
    """The Kaggle rows, repeated on demand with shifted times and fresh ids."""

    raw: np.ndarray
    labels: np.ndarray
    rng: np.random.Generator
    version: str
    threshold: float
    written: int = 0  # rows handed out so far: the next id and the next pass's shift

    def batch(self, n: int, run_id: str | None) -> ScoredRows:
        start = self.written
        index = np.arange(start, start + n) % len(self.raw)
        features = self.raw[index].copy()
        features[:, 0] += TWO_DAYS * (np.arange(start, start + n) // len(self.raw))
        score = self.rng.beta(0.5, 20.0, n)
        score[self.labels[index] == 1] = self.rng.beta(5.0, 2.0, int((self.labels[index] == 1).sum()))
        self.written += n
        return ScoredRows(
            ids=[f"x{start + i}" for i in range(n)],
            features=features,
            labels=self.labels[index].tolist(),
            run_ids=[run_id] * n,
            produced_at=[time.time() - 0.05] * n,
            model_version=self.version,
            score=score,
            recon_error=self.rng.lognormal(-1.0, 1.0, n),
            alert=score >= self.threshold,
        )


async def batch_days(conn: asyncpg.Connection, batches: list[ScoredRows]) -> list[int]:
    """The data days of the batches' rows, by `data_day` (the one definition, in PostgreSQL)."""
    times = np.concatenate([batch.features[:, 0] for batch in batches]).tolist()
    return [
        r["day"]
        for r in await conn.fetch("SELECT DISTINCT data_day(t) AS day FROM unnest($1::float8[]) t", times)
    ]


def _backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one PostgreSQL backend so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _fill(conn: asyncpg.Connection, rows: Rows, until: int) -> None:
    stored = await conn.fetchval("SELECT coalesce((SELECT scored FROM run_totals WHERE run_id = ''), 0)")
    with tqdm(total=until, initial=stored, desc="store", unit="rows", unit_scale=True) as bar:
        while stored < until:
            n = min(BATCH, until - stored)
            batch = rows.batch(n, None)
            await ensure_days(
                conn, await batch_days(conn, [batch])
            )  # as the scorer's maintenance keeps ahead
            await store_new(conn, batch, {})
            stored += n
            bar.update(n)


@dataclass
class WriteCost:
    rows: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # the writer's backend and the folder's (`fold_cpu` of it)
    fold_cpu: float = 0.0

    @property
    def per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_100k(self) -> float:
        return self.cpu * 100_000 / self.rows if self.rows else 0.0


async def _fold(folder: asyncpg.Connection, pid: int) -> float:
    """One `rollup_fold()` on the folder's connection; its backend's CPU seconds."""
    cpu = _backend_cpu(pid)
    await folder.fetchval(FOLD)
    return _backend_cpu(pid) - cpu


async def _write_cost(
    conn: asyncpg.Connection,
    folder: asyncpg.Connection,
    rows: Rows,
    total: int,
    batch: int,
    fold_rows: int,
    slices: int = 10,
) -> tuple[WriteCost, WriteCost]:
    """`total` rows in batches of `batch`, half with the rollups off (the statement without its
    narrow rollups, no fold; in a run deleted afterwards), half on (the scorer's statement, and
    a fold every `fold_rows`), alternating."""
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    folder_pid = await folder.fetchval("SELECT pg_backend_pid()")
    off, on = WriteCost(), WriteCost()
    per_slice = max(batch, total // (2 * slices) // batch * batch)
    try:
        for _ in tqdm(range(slices), desc=f"write cost, batches of {batch:,}", unit="slice"):
            for cost, enabled in ((off, False), (on, True)):
                batches = [rows.batch(batch, None if enabled else OFF_RUN) for _ in range(per_slice // batch)]
                await ensure_days(conn, await batch_days(conn, batches))
                await folder.fetchval(FOLD)  # what came before is not this slice's cost
                cpu, started, pending = _backend_cpu(pid), time.perf_counter(), 0
                for part in batches:
                    await store_new(conn, part, {}, rollups=enabled)
                    pending += len(part.ids)
                    if enabled and pending >= fold_rows:
                        cost.fold_cpu += await _fold(folder, folder_pid)
                        pending = 0
                if enabled and pending:
                    cost.fold_cpu += await _fold(folder, folder_pid)
                cost.seconds += time.perf_counter() - started
                cost.cpu += _backend_cpu(pid) - cpu
                cost.rows += per_slice
        on.cpu += on.fold_cpu
    finally:
        await folder.fetchval(FOLD)
        for table in ("scores", "transactions", "run_totals", *FOLDED):
            await conn.execute(f"DELETE FROM {table} WHERE run_id = $1", OFF_RUN)
    return off, on


async def _serving_backends(conn: asyncpg.Connection, own: Sequence[int]) -> list[int]:
    """The PostgreSQL backends serving clients other than this benchmark's own connections."""
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> ALL($1::int4[])",
        list(own),
    )
    return [row["pid"] for row in rows]


def _cpu_of(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds so far of each of these backends still running."""
    spent = {}
    for pid in pids:
        try:
            spent[pid] = _backend_cpu(pid)
        except (FileNotFoundError, ProcessLookupError):  # it ended in between
            continue
    return spent


async def _refresh_cost(port: int, conn: asyncpg.Connection, own: Sequence[int], seconds: float) -> float:
    """PostgreSQL CPU seconds per minute spent answering the Live page: its requests every
    `LIVE_REFRESH_SECONDS`, the API's cache off, after a warm-up (a page left open: each
    pooled connection has prepared its statements).

    What is counted is the CPU of the backends serving the API (user + system, from /proc),
    whatever they do for it (a sort spilled to disk, hint bits set) — not the whole server:
    after a bulk fill autovacuum, the checkpointer and the WAL writer spend far more than a
    refresh does (the whole-server figure less the idle server's read 0.00 at every size, its
    noise larger than the refreshes), and none of that is the page's doing."""
    requests = [_request("GET", path, port) for path in LIVE_PAGE]

    async def refresh(for_seconds: float) -> None:
        started, ticks = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - started) < for_seconds:
            await asyncio.sleep(max(0.0, ticks * LIVE_REFRESH_SECONDS - elapsed))
            await load(port, requests, len(requests), total=len(requests))  # as the page's callbacks: at once
            ticks += 1

    await refresh(min(15.0, seconds))
    before = _cpu_of(await _serving_backends(conn, own))
    started = time.perf_counter()
    await refresh(seconds)
    wall = time.perf_counter() - started
    after = _cpu_of(await _serving_backends(conn, own))  # a backend born meanwhile: all its CPU
    spent = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
    return spent * 60.0 / wall


async def _reads(port: int, requests: int) -> dict[str, tuple[float, float, int]]:
    """Per endpoint: p50 and p99 (ms) of `requests` GETs one at a time, and the errors."""
    out = {}
    for path in READ_ENDPOINTS:
        request = [_request("GET", path, port)]
        await load(port, request, 1, total=3)  # warm up the connection and the plans
        measured = await load(port, request, 1, total=requests)
        out[path] = (measured.pct(50), measured.pct(99), sum(measured.errors.values()))
    return out


def run(args: argparse.Namespace) -> int:
    machine = measure_machine()
    print(machine.describe(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="fraudstream-scale-bench-"))
    postgres = EmbeddedPostgres(work / "postgres", work / "postgres.log")
    api = None
    data = load_csv(args.data)
    bundle = _bundle(args.model, work)
    ensemble = Ensemble.load(bundle)
    rows = Rows(data.raw, data.labels, np.random.default_rng(0), ensemble.version, ensemble.threshold)
    results = []
    begun = time.perf_counter()
    try:
        url = postgres.start()
        upgrade(url)
        settings = Settings(
            database_url=url,
            kafka_bootstrap_servers="127.0.0.1:9",  # nothing is published
            model_path=bundle,
            state_dir=work / "state",
            _env_file=None,
        )
        port = free_port()

        async def register() -> None:
            conn = await asyncpg.connect(url)
            try:
                await register_model(conn, ensemble, bundle, activate=True, store=BundleStore(work / "store"))
            finally:
                await conn.close()

        asyncio.run(register())
        api = _start_api(
            {**os.environ, **settings_env(settings)}, port, work / "api.log", workers=1, cache=False
        )

        async def steps() -> None:
            conn = await asyncpg.connect(url)
            folder = await asyncpg.connect(url)
            try:
                with LoadSampler() as loadavg:
                    for n in args.steps:
                        await _fill(conn, rows, n)
                        await folder.fetchval(FOLD)
                        await conn.execute("VACUUM ANALYZE")
                        costs = {
                            batch: await _write_cost(
                                conn, folder, rows, args.write_rows, batch, args.fold_rows
                            )
                            for batch in args.batch
                        }
                        reads = await _reads(port, args.requests)
                        own = [await c.fetchval("SELECT pg_backend_pid()") for c in (conn, folder)]
                        refresh = await _refresh_cost(port, conn, own, args.refresh_seconds)
                        disk = await conn.fetchval("SELECT pg_database_size(current_database())")
                        results.append((n, costs, reads, refresh, disk, os.getloadavg()[0]))
                        print(f"step {n:,}: done, load {os.getloadavg()[0]:.2f}", flush=True)
                results.append(loadavg.describe())
            finally:
                await conn.close()
                await folder.close()

        asyncio.run(steps())
    finally:
        if api is not None:
            stop(api)
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)
    load_line = results.pop()
    print(f"\n{machine.describe()}\n{load_line}; the whole run {time.perf_counter() - begun:.0f} s\n")
    print(
        markdown_table(
            [
                "rows stored",
                "batch",
                "rows/s without / with rollups",
                "PostgreSQL CPU s per 100k rows without / with (of which the fold)",
                "with ÷ without",
            ],
            [
                (
                    f"{n:,}",
                    f"{batch:,}",
                    f"{off.per_second:,.0f} / {on.per_second:,.0f}",
                    f"{off.cpu_per_100k:.2f} / {on.cpu_per_100k:.2f} ({on.fold_cpu * 100_000 / on.rows:.2f})",
                    f"**{ratio(on.cpu_per_100k, off.cpu_per_100k)}**",
                )
                for n, costs, *_ in results
                for batch, (off, on) in costs.items()
            ],
        )
    )
    print()
    print(
        markdown_table(
            [
                "rows stored",
                "Live page refresh: CPU s per minute of the API's PostgreSQL backends",
                "disk",
                "load at end",
            ],
            [
                (f"{n:,}", f"{refresh:.2f}", f"{disk / 2**30:.2f} GiB", f"{load:.2f}")
                for n, _, _, refresh, disk, load in results
            ],
        )
    )
    print()
    print(
        markdown_table(
            ["GET (cache off), p50 / p99 ms", *(f"{n:,} rows" for n, *_ in results)],
            [
                (
                    f"`{path}`",
                    *(
                        f"{reads[path][0]:.1f} / {reads[path][1]:.1f}"
                        + (f" ({reads[path][2]} errors)" if reads[path][2] else "")
                        for _, _, reads, _, _, _ in results
                    ),
                )
                for path in READ_ENDPOINTS
            ],
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="Kaggle CSV (default: shipped sample)")
    parser.add_argument(
        "--steps",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[300_000, 3_000_000, 10_000_000],
        help="rows stored at each step, cumulative (default 300000,3000000,10000000)",
    )
    parser.add_argument(
        "--write-rows",
        type=int,
        default=200_000,
        help="rows written per step to measure the write cost (half each way)",
    )
    parser.add_argument(
        "--batch",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[20, 200, 4000],
        help="batch sizes the write cost is measured at (default 20,200,4000: the stream's to a replay's)",
    )
    parser.add_argument(
        "--fold-rows",
        type=int,
        default=2000,
        help="rows written between two folds (default 2000: one fold a second at 2,000 tx/s)",
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="model bundle (default: settings.model_path)"
    )
    parser.add_argument("--requests", type=int, default=100, help="GETs per endpoint per step (default 100)")
    parser.add_argument(
        "--refresh-seconds",
        type=float,
        default=60.0,
        help="how long the Live page's refreshes are measured per step (after a warm-up of up to 15 s)",
    )
    args = parser.parse_args(argv)
    args.data = args.data or SAMPLE_PATH
    if not args.data.exists():
        parser.error(f"--data {args.data}: no such file")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
