"""Benchmark the API on the full data: p50/p99 of each GET, and /api/predict throughput.

    python -m bench.api --data /work/shared/data/creditcard.csv.gz [--model models/default]

What it does, all on loopback and in a temporary folder:

1. starts its own embedded PostgreSQL and applies the migrations;
2. scores every row of `--data` with the bundle and stores it through
   `core.db.store.store_scored` (exactly what the scorer writes), then ANALYZEs;
3. starts the API (`python -m api.cli`) as a subprocess, and a second one with the
   aggregate cache off, so the table shows both the steady state and the cost of the SQL;
4. measures with a small keep-alive HTTP/1.1 load generator written on asyncio streams
   (cheap enough not to be the bottleneck on two cores): each GET at concurrency 8 on the
   quiet database; then each GET again WHILE a background task stores `--stream-rate`
   new rows per second through `store_scored` (the live dashboard's case: the data move
   under every answer), with how old each served answer's data were (`X-As-Of`); then
   the `/` heartbeat at concurrency 8 and 32 (what the server itself costs per request)
   and `/api/predict` at concurrency 1 and 32 (new ids, so every request stores a row),
   each with the CPU a request cost the API, PostgreSQL and the load generator.
   The machine's load average is sampled during each phase (the machine is shared).

The headline is a ratio measured in the same run, which carries from one machine to
another: `/api/predict` ÷ the `/` heartbeat at concurrency 32 (target >= 0.8), printed
with the machine line (`bench.machine`) before the absolute figures, and beside it the
CPU a prediction cost against what the target leaves it (the machine's CPUs over 0.8 x
the heartbeat's rate): above 1, no scheduling can reach the target on this machine.

Without `--model` (and no bundle at the default path) it trains a quick one on the
shipped sample first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
import numpy as np
import orjson
from tqdm import tqdm

from bench.cpu import CpuMeter, cpu_budget, per_events
from bench.machine import LoadSampler, measure_machine
from bench.stack import REPO_ROOT, sample_bundle
from bench.tables import markdown_table, ratio
from core.dataset import SAMPLE_PATH, load_csv
from core.db.migrate import upgrade
from core.db.store import ScoredRows, store_scored
from core.ensemble import Ensemble
from core.events import transaction_id
from core.features import EVENT_FEATURES
from core.prometheus import read_metric
from core.runtime.postgres import EmbeddedPostgres
from core.runtime.processes import free_port, port_open, spawn, stop, wait_until
from core.settings import Settings, settings_env

GET_ENDPOINTS: tuple[str, ...] = (
    "/",
    "/api/stats",
    "/api/stats/timeseries?minutes=60&bucket_seconds=60",
    "/api/transactions?limit=100",
    "/api/transactions?limit=100&label=1",
    "/api/transactions?limit=100&score_min=0.5",
    "/api/alerts?limit=100",
    "/api/anomalies?limit=100",
    "/api/distributions/amount",
    "/api/distributions/feature/V14",
    "/api/distributions/feature/score",
    "/api/scatter?x=V14&y=V17&n=500",
    "/api/model/performance",
    "/api/models",
    "/api/backtests",
)


@dataclass(frozen=True)
class Measured:
    requests: int
    seconds: float
    latencies_ms: np.ndarray
    errors: Counter
    ages_ms: np.ndarray  # age of each served answer's data (X-As-Of), cached answers only

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    def max_age(self) -> str:
        return f"{self.ages_ms.max():.0f}" if len(self.ages_ms) else "-"


# --------------------------------------------------------------------------- load generator


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, str | None]:
    """(status, body, the X-As-Of header if any)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    chunked = False
    as_of = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"x-as-of":
            as_of = value.strip().decode()
    if not chunked:
        return status, await reader.readexactly(length), as_of
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, bytes(body), as_of
        body += chunk[:-2]


def _request(method: str, path: str, port: int, body: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: keep-alive"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def load(
    port: int,
    requests: Sequence[bytes],
    concurrency: int,
    *,
    total: int | None = None,
    duration: float | None = None,
) -> Measured:
    """Send `requests` (cycled) over `concurrency` keep-alive connections; time each one."""
    latencies: list[float] = []
    ages: list[float] = []
    errors: Counter = Counter()
    sent = 0
    deadline = time.perf_counter() + duration if duration else None

    async def worker(offset: int) -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = offset
        try:
            while True:
                if (total is not None and sent >= total) or (deadline and time.perf_counter() >= deadline):
                    return
                sent += 1
                start = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status, _, as_of = await _read_response(reader)
                latencies.append((time.perf_counter() - start) * 1000)
                if as_of is not None:  # how old the served answer's data were when it arrived
                    ages.append((time.time() - datetime.fromisoformat(as_of).timestamp()) * 1000)
                if status >= 400:
                    errors[status] += 1
                i += concurrency
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    seconds = time.perf_counter() - started
    return Measured(len(latencies), seconds, np.asarray(latencies), errors, np.asarray(ages))


# --------------------------------------------------------------------------- setup


def _ids(raw: np.ndarray) -> list[str]:
    seen: Counter[bytes] = Counter()
    out = []
    for row in raw:
        key = row.tobytes()
        out.append(transaction_id(row.tolist(), seen[key]))
        seen[key] += 1
    return out


async def _fill(url: str, ensemble: Ensemble, data_path: Path, batch: int = 8192) -> int:
    data = load_csv(data_path)
    ids = _ids(data.raw)
    conn = await asyncpg.connect(url)
    stored = 0
    try:
        with tqdm(total=len(ids), desc="score + store", unit="rows") as bar:
            for start in range(0, len(ids), batch):
                part = data.raw[start : start + batch]
                scored = ensemble.score(part)
                rows = ScoredRows(
                    ids=ids[start : start + batch],
                    features=part,
                    labels=data.labels[start : start + batch].tolist(),
                    run_ids=[None] * len(part),
                    produced_at=[time.time()] * len(part),
                    model_version=ensemble.version,
                    score=scored.score,
                    recon_error=scored.recon_error,
                    alert=scored.alert,
                )
                stored += await store_scored(conn, rows)
                bar.update(len(part))
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return stored


def _bundle(model: Path | None, work: Path) -> Path:
    if model is not None:
        return model
    default = Settings(_env_file=None).model_path
    if (default / "manifest.json").exists():
        return default
    print(f"no bundle at {default}: training a quick one on the shipped sample", file=sys.stderr)
    return sample_bundle(work / "bundle", progress=True)


def _start_api(env: dict[str, str], port: int, log: Path, *, workers: int, cache: bool):
    if cache:
        argv = [sys.executable, "-m", "api.cli", "--port", str(port), "--workers", str(workers)]
    else:
        argv = [sys.executable, "-m", "bench.api", "--serve-uncached", "--port", str(port)]
    process = spawn(argv, log_path=log, env=env, cwd=REPO_ROOT)
    wait_until(
        lambda: port_open("127.0.0.1", port), timeout=120, what="the API", process=process, log_path=log
    )
    return process


def _serve_uncached(port: int) -> int:
    """The API with the aggregate cache off: every GET runs its SQL."""
    import uvicorn

    from api.main import create_app

    uvicorn.run(
        create_app(cache_seconds=0, freeze_heap=True),  # served as `fraudstream api` serves it
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
    return 0


# --------------------------------------------------------------------------- run


async def _bench_gets(port: int, port_uncached: int, requests_per_endpoint: int) -> tuple[list[tuple], str]:
    with LoadSampler() as loadavg:
        rows = await _bench_gets_quiet(port, port_uncached, requests_per_endpoint)
    return rows, loadavg.describe()


async def _bench_gets_quiet(port: int, port_uncached: int, requests_per_endpoint: int) -> list[tuple]:
    rows = []
    for path in tqdm(GET_ENDPOINTS, desc="GET endpoints", unit="endpoint"):
        request = [_request("GET", path, port)]
        await load(port, request, 2, total=20)  # warm up (and fill the cache)
        cached = await load(port, request, 8, total=requests_per_endpoint)
        request_u = [_request("GET", path, port_uncached)]
        await load(port_uncached, request_u, 2, total=4)
        uncached = await load(port_uncached, request_u, 8, total=max(40, requests_per_endpoint // 10))
        rows.append((path, cached, uncached))
    return rows


@dataclass
class Streamer:
    """Stores `rate` new rows per second through `store_scored` (the scorer's write path) in 10 ticks/s."""

    url: str
    ensemble: Ensemble
    raw: np.ndarray
    labels: np.ndarray
    rate: int
    stored: int = 0
    seconds: float = 0.0

    async def run(self, stop_event: asyncio.Event) -> None:
        rng = np.random.default_rng(1)
        picks = rng.choice(len(self.labels), size=min(len(self.labels), 20_000), replace=False)
        raw, labels = self.raw[picks], self.labels[picks]
        scored = self.ensemble.score(raw)
        per_tick = max(1, self.rate // 10)
        conn = await asyncpg.connect(self.url)
        started = time.perf_counter()
        tick, offset = 0, 0
        try:
            while not stop_event.is_set():
                take = (np.arange(per_tick) + offset) % len(labels)
                offset += per_tick
                rows = ScoredRows(
                    ids=[f"bench-stream-{uuid.uuid4().hex}" for _ in range(per_tick)],
                    features=raw[take],
                    labels=labels[take].tolist(),
                    run_ids=[None] * per_tick,
                    produced_at=[time.time()] * per_tick,
                    model_version=self.ensemble.version,
                    score=scored.score[take],
                    recon_error=scored.recon_error[take],
                    alert=scored.alert[take],
                )
                self.stored += await store_scored(conn, rows)
                tick += 1
                delay = started + tick / 10 - time.perf_counter()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop_event.wait(), delay)
        finally:
            self.seconds = time.perf_counter() - started
            await conn.close()


def _computed_answers(port: int) -> float:
    """How many cached-route answers made their request wait for the queries (from /metrics)."""
    url = f"http://127.0.0.1:{port}/metrics"
    return read_metric(url, "fraudstream_api_cache_answers_total", timeout=30, outcome="computed") or 0.0


async def _bench_streaming(port: int, streamer: Streamer, requests_per_endpoint: int) -> tuple[list, str]:
    """Each GET (cache on) while `streamer` stores rows: what the live dashboard sees."""
    stop_event = asyncio.Event()
    task = asyncio.create_task(streamer.run(stop_event))
    rows = []
    try:
        with LoadSampler() as loadavg:
            await asyncio.sleep(3.0)  # the stream is running before the first request
            for path in tqdm(GET_ENDPOINTS, desc="GET while streaming", unit="endpoint"):
                request = [_request("GET", path, port)]
                await load(port, request, 2, total=20)
                before = await asyncio.to_thread(_computed_answers, port)
                measured = await load(port, request, 8, total=requests_per_endpoint)
                waited = await asyncio.to_thread(_computed_answers, port) - before
                rows.append((path, measured, int(waited)))
                if task.done():
                    break
    finally:
        stop_event.set()
        await task
    return rows, loadavg.describe()


def _predict_bodies(data_path: Path, port: int, n: int = 2000) -> list[bytes]:
    data = load_csv(SAMPLE_PATH if data_path is None else data_path)
    rng = np.random.default_rng(0)
    picks = rng.choice(len(data.labels), size=n, replace=False)
    bodies = []
    for i in picks:
        body = dict(zip(EVENT_FEATURES, data.raw[i].tolist(), strict=True))
        bodies.append(_request("POST", "/api/predict", port, orjson.dumps(body)))
    return bodies


#: The processes whose CPU a request costs, in the rate tables' order.
CPU_GROUPS = ("API", "PostgreSQL", "load generator")


@dataclass(frozen=True)
class RateRow:
    concurrency: int
    measured: Measured
    cpu_us: dict[str, float]  # CPU microseconds per request, per process group (and "total")


def _rate_phase(
    port: int, requests: Sequence[bytes], concurrencies: Sequence[int], duration: float, meter: CpuMeter
) -> tuple[list[RateRow], str]:
    """Each concurrency for `duration` seconds after a short warm-up, with the CPU each request
    cost each process; the load average over the phase."""
    rows = []
    with LoadSampler() as loadavg:
        for concurrency in concurrencies:
            asyncio.run(load(port, requests, concurrency, total=200))
            before = meter.sample()
            measured = asyncio.run(load(port, requests, concurrency, duration=duration))
            per_request = per_events(before, meter.sample(), measured.requests, 1)
            rows.append(
                RateRow(concurrency, measured, {name: cpu * 1e6 for name, cpu in per_request.items()})
            )
    return rows, loadavg.describe()


def _rate_table(rows: Sequence[RateRow]) -> str:
    return markdown_table(
        [
            "concurrency",
            "requests",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            f"CPU µs per request: {' / '.join(CPU_GROUPS)} / total",
        ],
        [
            (
                r.concurrency,
                r.measured.requests,
                f"{r.measured.rate:.0f}",
                f"{r.measured.pct(50):.2f}",
                f"{r.measured.pct(99):.2f}",
                sum(r.measured.errors.values()),
                " / ".join(f"{r.cpu_us[name]:.0f}" for name in (*CPU_GROUPS, "total")),
            )
            for r in rows
        ],
    )


def run(args: argparse.Namespace) -> int:
    machine = measure_machine()
    print(machine.describe(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="fraudstream-api-bench-"))
    postgres = EmbeddedPostgres(work / "postgres", work / "postgres.log")
    processes = []
    try:
        url = postgres.start()
        upgrade(url)
        bundle = _bundle(args.model, work)
        ensemble = Ensemble.load(bundle)
        started = time.perf_counter()
        stored = asyncio.run(_fill(url, ensemble, args.data))
        print(f"stored {stored:,} rows in {time.perf_counter() - started:.1f}s (model {ensemble.version})")
        settings = Settings(
            database_url=url,
            kafka_bootstrap_servers="127.0.0.1:9",  # publishing is not measured; no broker needed
            model_path=bundle,
            state_dir=work / "state",
            _env_file=None,
        )
        env = {**os.environ, **settings_env(settings)}
        port, port_uncached = free_port(), free_port()
        processes.append(_start_api(env, port, work / "api.log", workers=args.workers, cache=True))
        processes.append(_start_api(env, port_uncached, work / "api-uncached.log", workers=1, cache=False))

        get_rows, quiet_load = asyncio.run(_bench_gets(port, port_uncached, args.requests))
        data = load_csv(args.data)
        streamer = Streamer(url, ensemble, data.raw, data.labels, args.stream_rate)
        stream_rows, stream_load = asyncio.run(_bench_streaming(port, streamer, args.requests))
        api, server = processes[0].pid, postgres.process.pid
        meter = CpuMeter(
            dict(zip(CPU_GROUPS, ((api, True), (server, True), (os.getpid(), False)), strict=True))
        )
        heartbeat_rows, heartbeat_load = _rate_phase(
            port, [_request("GET", "/", port)], (8, 32), args.duration, meter
        )
        bodies = _predict_bodies(args.data, port)
        predict_rows, predict_load = _rate_phase(port, bodies, (1, 32), args.duration, meter)
    finally:
        for process in processes:
            stop(process)
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nGET endpoints, quiet database, {stored:,} rows stored, concurrency 8, API workers {args.workers}"
    )
    print(
        "(cached: the API as it runs, cache bound 2 s, 10 s for distributions/scatter/performance; "
        "SQL: the same API with the cache off)"
    )
    print(f"load average during the run: {quiet_load}\n")
    headers = ["endpoint", "p50 ms", "p99 ms", "req/s", "SQL p50 ms", "SQL p99 ms", "errors"]
    table = [
        (
            path,
            f"{c.pct(50):.2f}",
            f"{c.pct(99):.2f}",
            f"{c.rate:.0f}",
            f"{u.pct(50):.1f}",
            f"{u.pct(99):.1f}",
            sum((c.errors + u.errors).values()),
        )
        for path, c, u in get_rows
    ]
    print(markdown_table(headers, table))
    achieved = streamer.stored / streamer.seconds if streamer.seconds else 0.0
    print(
        f"\nGET endpoints WHILE STREAMING: {achieved:,.0f} rows/s stored through store_scored "
        f"(target {args.stream_rate:,}/s, {streamer.stored:,} rows in {streamer.seconds:.0f}s), "
        f"concurrency 8, cache on"
    )
    print(
        "(age: how old the served answer's data were (X-As-Of) when it arrived; "
        "waited: answers whose request waited for the queries, from /metrics)"
    )
    print(f"load average during the run: {stream_load}\n")
    print(
        markdown_table(
            ["endpoint", "p50 ms", "p99 ms", "req/s", "age p50 ms", "age max ms", "waited", "errors"],
            [
                (
                    path,
                    f"{m.pct(50):.2f}",
                    f"{m.pct(99):.2f}",
                    f"{m.rate:.0f}",
                    f"{np.percentile(m.ages_ms, 50):.0f}" if len(m.ages_ms) else "-",
                    m.max_age(),
                    waited,
                    sum(m.errors.values()),
                )
                for path, m, waited in stream_rows
            ],
        )
    )
    print(f"\nGET / heartbeat ({args.duration:.0f}s each): the server's own cost per request")
    print(f"{heartbeat_load}\n")
    print(_rate_table(heartbeat_rows))
    print(f"\nPOST /api/predict ({args.duration:.0f}s each, new row stored per request)")
    print(f"{predict_load}\n")
    print(_rate_table(predict_rows))
    heartbeat_32 = next(r for r in heartbeat_rows if r.concurrency == 32)
    predict_32 = next(r for r in predict_rows if r.concurrency == 32)
    hb_rate, predict_rate = heartbeat_32.measured.rate, predict_32.measured.rate
    budget_us = cpu_budget(0.8, hb_rate, 1) * 1e6  # per prediction, at 0.8 x the heartbeat's rate
    print()
    print(machine.describe())
    print(
        markdown_table(
            ["ratio (same run)", "value", "target"],
            [
                (
                    "`/api/predict` ÷ `/` heartbeat, requests/s at concurrency 32",
                    f"**{ratio(predict_rate, hb_rate)}** ({predict_rate:,.0f} ÷ {hb_rate:,.0f})",
                    ">= 0.8",
                ),
                (
                    "CPU per prediction (all processes) ÷ what the target leaves it "
                    f"({os.cpu_count()} CPUs ÷ (0.8 × {hb_rate:,.0f} req/s))",
                    f"{ratio(predict_32.cpu_us['total'], budget_us)} "
                    f"({predict_32.cpu_us['total']:,.0f} ÷ {budget_us:,.0f} µs)",
                    "<= 1 for the target to be reachable",
                ),
            ],
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="Kaggle CSV to store (default: shipped sample)"
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="model bundle (default: settings.model_path)"
    )
    parser.add_argument("--requests", type=int, default=400, help="requests per GET endpoint (default 400)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per predict run (default 8)")
    parser.add_argument("--workers", type=int, default=1, help="API worker processes (default 1)")
    parser.add_argument(
        "--stream-rate", type=int, default=2000, help="rows/s stored while measuring GETs (default 2000)"
    )
    parser.add_argument("--serve-uncached", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_uncached:
        return _serve_uncached(args.port)
    if args.data is None:
        args.data = SAMPLE_PATH
    if not args.data.exists():
        parser.error(f"--data {args.data}: no such file")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
