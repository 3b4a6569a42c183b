"""End-to-end benchmark: CSV → producer → Kafka → scorer worker(s) → PostgreSQL, on this machine.

    python -m bench.stream --data /work/shared/data/creditcard.csv.gz [--workers 2] [--model DIR]

Starts its own embedded broker and PostgreSQL in a temporary folder, its own scorer worker
processes, and (without `--model`) trains a small bundle on the shipped sample. Then:

1. throughput: replays the whole file as fast as possible and times first produce → last
   committed row (the newest `scored_at` in PostgreSQL); reading and checking the CSV
   comes before the first produce, so it is outside the clock and the CPU figures;
2. latency: empties the tables and replays at a steady `--rate` (2,000/s) for `--seconds`,
   then reads the workers' stage histograms over that window (`fraudstream_stage_seconds`:
   producer timestamp → fetched, taken, scored, write started, stored = committed, acked;
   p50/p95/p99 of each, the headline is p99 → stored) and, beside them, `scores.latency_ms`
   from PostgreSQL (stamped at the INSERT, before its commit). `--phases latency` runs only
   this, after a short warm-up at the same rate;
3. for scale, a bare aiokafka consumer reads the same topic from the start;
4. Faust's own cost: the whole file is published to a second topic first (pre-filled,
   same partitions), then two processes of a plain aiokafka loop doing the scorer's work
   (`bench.plain_loop`: the same `ScorerWorker` decode → model → store, offsets committed
   after each write) consume it as one group, and then two Faust scorer workers
   (`python -m scorer.cli`, a fresh group) consume the same topic. Each is timed first →
   last stored row (`scored_at`). A lock on `transactions` holds every write back until
   both processes of a pair have joined the group, so neither pays for the other's
   startup or a rebalance mid-run. `--phases prefilled` runs only this part, `--rounds`
   repeats the pair (alternating), and `--profile DIR` records each Faust worker with
   py-spy during its run (`py-spy record --native`, a flame graph per worker).
5. the shadow's cost (in the stream phase): registers the model as the champion and a second
   bundle (the same recipe, another seed; or `--shadow-model`) as the shadow, empties the
   tables and replays the whole file again as fast as possible, then once more with the shadow
   cleared: throughput with a shadow ÷ without, both warm. `--no-shadow` skips it.

Prints the machine line (`bench.machine`) and the load average sampled through the run, then
the headline ratios, measured in this run, that carry from one machine to another:
end-to-end ÷ the bare consumer (and beside it the CPU an event cost against what that target
leaves it: the machine's CPUs over 0.20 x the bare consumer's rate), with a shadow ÷ without,
and the Faust scorer ÷ the plain loop, then the absolute figures, with CPU seconds per 100k
events per process. Figures vary with what else runs on the machine: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.cpu import CpuMeter, cpu_budget, per_100k
from bench.machine import LoadSampler, measure_machine
from bench.stack import REPO_ROOT, sample_bundle
from bench.stages import StageCounts, stage_rows
from bench.tables import markdown_table, ratio
from core.bundle_store import BundleStore
from core.dataset import SAMPLE_PATH
from core.db.registry import register_model, set_shadow
from core.ensemble import Ensemble
from core.kafka import scorer_group_id
from core.prometheus import read_metric
from core.runtime.processes import spawn, stop, wait_until
from core.runtime.stack import Infra
from core.settings import Settings, settings_env
from producer.replay import replay

#: The second topic of the Faust ÷ plain-loop phase, filled before either consumer starts.
PREFILLED_TOPIC = "transactions-prefilled"


def _metric(port: int, name: str) -> float:
    """A worker's metric; -1 while its web server is not up yet."""
    value = read_metric(f"http://127.0.0.1:{port}/metrics", name)
    return -1.0 if value is None else value


#: Rows stored so far, from the per-run counters the write triggers keep (migration 0003):
#: one row read, where `count(*)` five times a second scanned the growing table and took
#: PostgreSQL CPU from the very writes being measured.
STORED_SO_FAR = "SELECT coalesce(sum(scored), 0) FROM run_totals"


async def _wait_stored(database_url: str, expected: int, timeout: float) -> float:
    """Wait until `expected` scores are stored; return the newest scored_at (epoch seconds)."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await conn.fetchval(STORED_SO_FAR) >= expected:
                return float(await conn.fetchval("SELECT extract(epoch FROM max(scored_at)) FROM scores"))
            await asyncio.sleep(0.2)
        stored = await conn.fetchval(STORED_SO_FAR)
        raise TimeoutError(f"only {stored} of {expected} rows stored after {timeout:.0f} s")
    finally:
        await conn.close()


async def _latencies(database_url: str) -> tuple[int, list[float]]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_ms) AS p "
            "FROM scores"
        )
        return int(row["n"]), list(row["p"])
    finally:
        await conn.close()


async def _truncate(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE scores, transactions, shadow_scores")
    finally:
        await conn.close()


async def _bare_consumer(bootstrap_servers: str, topic: str, expected: int) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    try:
        seen = 0
        started = time.perf_counter()
        while seen < expected:
            for records in (await consumer.getmany(timeout_ms=500, max_records=50_000)).values():
                seen += len(records)
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


#: What PostgreSQL did, from its own statistics: transactions, rows inserted / updated / deleted.
DATABASE_WORK = (
    "SELECT xact_commit + xact_rollback AS transactions, tup_inserted AS inserted, "
    "tup_updated AS updated, tup_deleted AS deleted FROM pg_stat_database WHERE datname = current_database()"
)


async def _database_work(database_url: str) -> dict[str, int]:
    """PostgreSQL's counters for this database (`pg_stat_database`, refreshed for this read)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(DATABASE_WORK)
        return {key: int(value) for key, value in row.items()}
    finally:
        await conn.close()


@dataclass(frozen=True)
class ConsumerRun:
    """One pair of consumer processes on the pre-filled topic: first → last stored row, and their CPU."""

    name: str
    rows: int
    seconds: float
    cpu: dict[str, float]  # CPU s per 100k events, per process group
    load: float  # 1-minute load average at the end
    batches: float  # batches written (the workers' `fraudstream_batch_size_count`)
    database: dict[str, int]  # PostgreSQL's counters over the run (`DATABASE_WORK`)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


async def _stored_span(database_url: str) -> tuple[int, float]:
    """(rows in scores, seconds from the first to the last scored_at)."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM max(scored_at) - min(scored_at)) AS span FROM scores"
        )
        return int(row["n"]), float(row["span"] or 0.0)
    finally:
        await conn.close()


class WriteGate:
    """Holds every write to `transactions` back (a SHARE lock in an open transaction) until `open()`."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.conn: asyncpg.Connection | None = None
        self.transaction = None

    async def close_gate(self) -> None:
        self.conn = await asyncpg.connect(self.database_url)
        self.transaction = self.conn.transaction()
        await self.transaction.start()
        await self.conn.execute("LOCK TABLE transactions IN SHARE MODE")

    async def open(self) -> None:
        await self.transaction.commit()
        await self.conn.close()


async def _rewind_group(bootstrap_servers: str, group: str, partitions: int) -> None:
    """Commit offset 0 on every partition of the pre-filled topic for `group`: it reads it all again."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(PREFILLED_TOPIC, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.commit(dict.fromkeys(tps, 0))
    finally:
        await consumer.stop()


def _last_logged(log_path: Path, word: str) -> float:
    """The number on the plain loop's last `<word> N` line (-1 before the first)."""
    try:
        lines = [line for line in log_path.read_text().splitlines() if line.startswith(f"{word} ")]
    except OSError:
        return -1.0
    return float(lines[-1].split()[1]) if lines else -1.0


def _assigned_from_log(log_path: Path) -> int:
    """The plain loop's partitions now (its last `assigned N` line; -1 before the first)."""
    return int(_last_logged(log_path, "assigned"))


def _batches_from_log(log_path: Path) -> float:
    """The plain loop's batches written so far (it says `batches N` after each write)."""
    return _last_logged(log_path, "batches")


def _run_pair(
    name: str,
    argvs: list[list[str]],
    assigned: list,  # one callable per process: its partitions now (-1: not joined)
    batches: list,  # one callable per process: batches written so far (read before it stops)
    *,
    env: dict[str, str],
    logs: list[Path],
    infra: Infra,
    database_url: str,
    partitions: int,
    expected: int,
    profile: Path | None,
) -> ConsumerRun:
    """Start the processes behind a closed write gate, open it once all joined, time the rows stored."""
    asyncio.run(_truncate(database_url))
    gate = WriteGate(database_url)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(gate.close_gate())
    processes = []
    profilers = []
    try:
        for argv, log_path in zip(argvs, logs, strict=True):
            processes.append(spawn(argv, log_path=log_path, env=env, cwd=REPO_ROOT))
        wait_until(
            lambda: all(a() >= 1 for a in assigned) and sum(a() for a in assigned) == partitions,
            timeout=180,
            what=f"{name}: {len(argvs)} processes joining the group",
            process=processes[0],
            log_path=logs[0],
        )
        time.sleep(2.0)  # a rebalance that is still settling would show in the assignments now
        wait_until(
            lambda: all(a() >= 1 for a in assigned) and sum(a() for a in assigned) == partitions,
            timeout=60,
            what=f"{name}: the group settled",
        )
        groups = {f"{name} process {i}": (p.pid, True) for i, p in enumerate(processes)}
        groups["postgres (server + backends)"] = (infra.postgres.process.pid, True)
        groups["broker"] = (infra.broker.process.pid, True)
        meter = CpuMeter(groups)
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            for i, process in enumerate(processes):
                out = profile / f"{name.replace(' ', '-')}-{i}.svg"
                profilers.append(
                    spawn(
                        [
                            "py-spy",
                            "record",
                            "--native",
                            "--rate",
                            "200",
                            "--pid",
                            str(process.pid),
                            "-o",
                            str(out),
                        ],
                        log_path=profile / f"{name.replace(' ', '-')}-{i}.py-spy.log",
                        env=env,
                        cwd=REPO_ROOT,
                    )
                )
        before = meter.sample()
        work_before = asyncio.run(_database_work(database_url))
        loop.run_until_complete(gate.open())
        asyncio.run(_wait_stored(database_url, expected, timeout=900))
        after = meter.sample()
        work = asyncio.run(_database_work(database_url))
        written = sum(max(0.0, count()) for count in batches)
        for profiler in profilers:  # py-spy writes its flame graph on SIGINT
            stop(profiler, timeout=60, sig=signal.SIGINT)
        rows, seconds = asyncio.run(_stored_span(database_url))
    finally:
        for profiler in profilers:
            stop(profiler, timeout=5)
        for process in processes:
            stop(process, timeout=30)
        loop.close()
    return ConsumerRun(
        name,
        rows,
        seconds,
        per_100k(before, after, rows),
        after.load,
        written,
        {key: work[key] - work_before[key] for key in work},
    )


def _prefilled(
    args: argparse.Namespace, root: Path, settings: Settings, infra: Infra, env: dict[str, str]
) -> list[ConsumerRun]:
    """Fill the second topic, then the plain loop and the Faust scorer on it, `--rounds` times, alternating."""
    endpoints = infra.endpoints
    print(f"pre-filling {PREFILLED_TOPIC} with {args.data}", flush=True)
    filled = asyncio.run(
        replay(args.data, bootstrap_servers=endpoints.bootstrap_servers, topic=PREFILLED_TOPIC, progress=True)
    )
    pair_env = {**env, "FRAUDSTREAM_TOPIC_TRANSACTIONS": PREFILLED_TOPIC}
    runs: list[ConsumerRun] = []
    for round_ in range(args.rounds):
        plain_logs = [root / f"plain-loop-{round_}-{i}.log" for i in range(args.workers)]
        plain = _run_pair(
            "plain loop",
            [
                [sys.executable, "-m", "bench.plain_loop", "--group", f"bench-plain-loop-{round_}"]
                for _ in range(args.workers)
            ],
            [lambda path=path: _assigned_from_log(path) for path in plain_logs],
            [lambda path=path: _batches_from_log(path) for path in plain_logs],
            env=pair_env,
            logs=plain_logs,
            infra=infra,
            database_url=endpoints.database_url,
            partitions=args.partitions,
            expected=filled.sent,
            profile=None,
        )
        print(f"plain loop: {plain.rows:,} rows in {plain.seconds:.2f} s = {plain.rate:,.0f}/s", flush=True)
        # The scorer's group follows its topic (`core.kafka.scorer_group_id`): start it over.
        asyncio.run(
            _rewind_group(endpoints.bootstrap_servers, scorer_group_id(PREFILLED_TOPIC), args.partitions)
        )
        ports = [settings.scorer_web_port + 200 + 10 * round_ + i for i in range(args.workers)]
        faust_env = {**pair_env, "FRAUDSTREAM_STATE_DIR": str(root / f"faust-state-{round_}")}
        faust = _run_pair(
            "faust scorer",
            [[sys.executable, "-m", "scorer.cli", "--web-port", str(port)] for port in ports],
            [lambda port=port: int(_metric(port, "fraudstream_assigned_partitions")) for port in ports],
            [lambda port=port: _metric(port, "fraudstream_batch_size_count") for port in ports],
            env=faust_env,
            logs=[root / f"faust-{round_}-{i}.log" for i in range(args.workers)],
            infra=infra,
            database_url=endpoints.database_url,
            partitions=args.partitions,
            expected=filled.sent,
            profile=args.profile,
        )
        print(f"faust scorer: {faust.rows:,} rows in {faust.seconds:.2f} s = {faust.rate:,.0f}/s", flush=True)
        runs += [plain, faust]
    return runs


def run(args: argparse.Namespace) -> int:
    machine = measure_machine()
    print(machine.describe(), flush=True)
    rows: list[tuple[str, str]] = []
    ratios: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="fraudstream-bench-") as tmp, LoadSampler() as load:
        root = Path(tmp)
        settings = Settings(state_dir=root / "state", topic_partitions=args.partitions, _env_file=None)
        infra = Infra(settings)
        endpoints = infra.start()
        try:
            model = Path(args.model) if args.model else sample_bundle(root / "model")
            env = settings_env(
                settings,
                FRAUDSTREAM_KAFKA_BOOTSTRAP_SERVERS=endpoints.bootstrap_servers,
                FRAUDSTREAM_DATABASE_URL=endpoints.database_url,
                FRAUDSTREAM_MODEL_PATH=str(model),
                FRAUDSTREAM_LOG_LEVEL="WARNING",
            )
            if "stream" in args.phases:
                stream_ratios, stream_rows = _streaming(args, root, settings, infra, env)
                ratios += stream_ratios
                rows += stream_rows
            if "latency" in args.phases and "stream" not in args.phases:  # stream measures it too
                latency_ratios, latency_rows = _latency_only(args, root, settings, infra, env)
                ratios += latency_ratios
                rows += latency_rows
            if "prefilled" in args.phases:
                runs = _prefilled(args, root, settings, infra, env)
                plain = [r for r in runs if r.name == "plain loop"]
                faust = [r for r in runs if r.name == "faust scorer"]
                each = ", ".join(f"{f.rate / p.rate:.2f}" for p, f in zip(plain, faust, strict=True))
                plain_rate = float(np.median([r.rate for r in plain]))
                faust_rate = float(np.median([r.rate for r in faust]))
                ratios.append(
                    (
                        "Faust scorer ÷ plain aiokafka loop, same work, pre-filled topic",
                        f"**{ratio(faust_rate, plain_rate)}** ({faust_rate:,.0f} ÷ {plain_rate:,.0f} rows/s"
                        + (f"; each round {each}" if len(plain) > 1 else "")
                        + ")",
                        ">= 0.85",
                    )
                )
                for r in runs:
                    rows.append(
                        (
                            f"pre-filled topic, {r.name} ×{args.workers}: first → last stored row",
                            f"{r.rows:,} rows in {r.seconds:.2f} s = {r.rate:,.0f} rows/s (load {r.load:.2f})",
                        )
                    )
                for r in runs:
                    rows += [
                        (f"CPU s per 100k events, pre-filled, {name}", f"{value:.2f}")
                        for name, value in r.cpu.items()
                    ]
                for r in runs:
                    work = ", ".join(
                        f"{value * 100_000 / max(r.rows, 1):,.0f} {key}" for key, value in r.database.items()
                    )
                    rows += [
                        (
                            f"pre-filled, {r.name}: batches written, mean batch",
                            f"{r.batches:,.0f}, {r.rows / max(r.batches, 1):,.0f} rows",
                        ),
                        (f"pre-filled, {r.name}: PostgreSQL's work per 100k rows (pg_stat_database)", work),
                    ]
        finally:
            infra.stop()

    print()
    print(machine.describe())
    print(load.describe())
    print()
    print(markdown_table(["ratio (same run)", "value", "target"], ratios))
    print()
    print(markdown_table(["measure", "value"], rows))
    return 0


async def _register_pair(database_url: str, champion: Path, shadow: Path, store: BundleStore) -> str:
    """Register `champion` (active) and `shadow` (the shadow); return the shadow's version."""
    conn = await asyncpg.connect(database_url)
    try:
        first, second = Ensemble.load(champion), Ensemble.load(shadow)
        await register_model(conn, first, champion, activate=True, actor="bench", store=store)
        await register_model(conn, second, shadow, activate=False, actor="bench", store=store)
        await set_shadow(conn, second.version, "bench")
        return second.version
    finally:
        await conn.close()


def _sum_metric(ports: list[int], name: str) -> float:
    return sum(max(0.0, _metric(port, name)) for port in ports)


@dataclass(frozen=True)
class ShadowRun:
    sent: int
    throughput: float  # first produce -> last commit, rows/s, with the shadow
    without: float  # the same, the shadow cleared again (warm, like the shadow run)
    shadow_rows: int
    share: float  # the shadow's model call's share of the workers' batch time in this run


def _shadow_run(
    args, root: Path, endpoints, settings: Settings, model: Path, ports: list[int], workers
) -> ShadowRun:
    """The throughput replay again with a shadow beside the champion in every worker, then once
    more with the shadow cleared: both runs warm, one after the other, so their ratio is the
    shadow's cost and not the first run's warm-up."""
    shadow = Path(args.shadow_model) if args.shadow_model else sample_bundle(root / "shadow", seed=7)
    version = asyncio.run(
        _register_pair(endpoints.database_url, model, shadow, BundleStore(settings.resolved_model_store))
    )
    wait_until(
        lambda: all(_metric(port, "fraudstream_shadow_model") >= 1 for port in ports),
        timeout=120,
        what=f"the workers scoring shadow {version}",
        process=workers[0],
        log_path=root / "worker-0.log",
    )
    print(f"shadow {version} set; replaying {args.data} again", flush=True)
    shadow_before = _sum_metric(ports, "fraudstream_shadow_batch_seconds_sum")
    batch_before = _sum_metric(ports, "fraudstream_batch_seconds_sum")
    sent, with_shadow = _replay_throughput(args, endpoints, settings)
    shadow_seconds = _sum_metric(ports, "fraudstream_shadow_batch_seconds_sum") - shadow_before
    batch_seconds = _sum_metric(ports, "fraudstream_batch_seconds_sum") - batch_before
    rows = asyncio.run(_count(endpoints.database_url, "SELECT count(*) FROM shadow_scores"))

    asyncio.run(_clear_shadow(endpoints.database_url))
    wait_until(
        lambda: all(_metric(port, "fraudstream_shadow_model") <= 0 for port in ports),
        timeout=120,
        what="the workers leaving the shadow",
    )
    print(f"shadow cleared; replaying {args.data} once more", flush=True)
    _, without = _replay_throughput(args, endpoints, settings)
    return ShadowRun(
        sent,
        with_shadow,
        without,
        rows,
        shadow_seconds / batch_seconds if batch_seconds > 0 else float("nan"),
    )


def _replay_throughput(args, endpoints, settings: Settings) -> tuple[int, float]:
    """Empty the tables, replay the file as fast as possible: (rows, first produce -> last commit rows/s)."""
    asyncio.run(_truncate(endpoints.database_url))
    report = asyncio.run(
        replay(args.data, bootstrap_servers=endpoints.bootstrap_servers, topic=settings.topic_transactions)
    )
    last_commit = asyncio.run(_wait_stored(endpoints.database_url, report.sent, timeout=600))
    return report.sent, report.sent / (last_commit - report.first_sent_at)


async def _clear_shadow(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await set_shadow(conn, None, "bench")
    finally:
        await conn.close()


async def _count(database_url: str, sql: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


@dataclass(frozen=True)
class LatencyRun:
    """The steady-rate replay: per-row latency from PostgreSQL, the workers' stage histograms, CPU."""

    sent: int
    rate_achieved: float
    inserted: tuple[
        int, list[float]
    ]  # rows, p50/p95/p99 of `latency_ms` (stamped at the INSERT, before commit)
    stages: StageCounts  # the window's `fraudstream_stage_seconds`, summed over the workers
    batches: float  # scorer batches written in the window
    cpu: dict[str, float]  # CPU s per 100k events, per process group
    load: tuple[float, float]  # 1-minute load average at start / end

    def headline(self, rate: float) -> tuple[str, str, str]:
        p50, p95, p99 = (1000 * self.stages.quantile("stored", q) for q in (0.5, 0.95, 0.99))
        return (
            f"p99 produce → durably stored (committed) at a steady {rate:,.0f} tx/s",
            f"**{p99:.1f} ms** (p50 {p50:.1f}, p95 {p95:.1f}; {self.stages.count('stored'):,} rows)",
            "< 100 ms",
        )

    def rows(self, rate: float) -> list[tuple[str, str]]:
        measured, (p50, p95, p99) = self.inserted
        rows = [
            (f"achieved steady rate (asked {rate:g}/s)", f"{self.rate_achieved:,.0f} tx/s"),
            (
                f"latency produce → row inserted (`scores.latency_ms`, before its commit), {measured:,} rows, "
                "p50 / p95 / p99",
                f"{p50:.1f} / {p95:.1f} / {p99:.1f} ms",
            ),
            *stage_rows(self.stages, f"latency at {rate:g}/s"),
            ("mean scorer batch, latency run", f"{self.sent / max(self.batches, 1):,.0f} events"),
            (
                "load average (1 min) at start / end of latency run",
                f"{self.load[0]:.2f} / {self.load[1]:.2f}",
            ),
        ]
        rows += [
            (f"CPU s per 100k events, latency run: {name}", f"{value:.2f}")
            for name, value in self.cpu.items()
        ]
        return rows


def _steady(
    args: argparse.Namespace, endpoints, settings: Settings, meter: CpuMeter, ports: list[int]
) -> LatencyRun:
    """Empty the tables, replay `--rate` events per second for `--seconds`, wait until all are stored."""
    asyncio.run(_truncate(endpoints.database_url))
    started = []
    stages_before = StageCounts.read(ports)
    batches_before = _sum_metric(ports, "fraudstream_batch_size_count")
    steady = asyncio.run(
        replay(
            args.data,
            bootstrap_servers=endpoints.bootstrap_servers,
            topic=settings.topic_transactions,
            rate=args.rate,
            limit=int(args.rate * args.seconds),
            progress=True,
            on_first_send=lambda: started.append(meter.sample()),
        )
    )
    (steady_start,) = started
    asyncio.run(_wait_stored(endpoints.database_url, steady.sent, timeout=120))
    steady_end = meter.sample()
    # The last batch's acknowledgement follows its commit by a moment: wait for its stage counts too.
    wait_until(
        lambda: (StageCounts.read(ports) - stages_before).count("acked") >= steady.sent,
        timeout=30,
        what="the workers' stage histograms counting every row",
    )
    stages = StageCounts.read(ports) - stages_before
    return LatencyRun(
        sent=steady.sent,
        rate_achieved=steady.rate_achieved,
        inserted=asyncio.run(_latencies(endpoints.database_url)),
        stages=stages,
        batches=_sum_metric(ports, "fraudstream_batch_size_count") - batches_before,
        cpu=per_100k(steady_start, steady_end, steady.sent),
        load=(steady_start.load, steady_end.load),
    )


def _start_workers(
    args: argparse.Namespace, root: Path, settings: Settings, env: dict[str, str]
) -> tuple[list, list[int]]:
    """`--workers` scorer processes, returned once they hold every partition between them."""
    ports = [settings.scorer_web_port + 100 + i for i in range(args.workers)]
    workers = []
    try:
        for i, port in enumerate(ports):
            workers.append(
                spawn(
                    [sys.executable, "-m", "scorer.cli", "--web-port", str(port)],
                    log_path=root / f"worker-{i}.log",
                    env=env,
                    cwd=REPO_ROOT,
                )
            )
        wait_until(
            lambda: (
                sum(max(0.0, _metric(p, "fraudstream_assigned_partitions")) for p in ports) >= args.partitions
                and all(_metric(p, "fraudstream_assigned_partitions") >= 0 for p in ports)
            ),
            timeout=120,
            what=f"{args.workers} scorer worker(s) joining the group",
            process=workers[0],
            log_path=root / "worker-0.log",
        )
    except BaseException:
        for process in workers:
            stop(process, timeout=30)
        raise
    return workers, ports


#: Events replayed at the steady rate before a latency-only run is measured (model and caches warm).
WARMUP_SECONDS = 5.0


def _latency_only(
    args: argparse.Namespace, root: Path, settings: Settings, infra: Infra, env: dict[str, str]
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """`--phases latency`: the steady-rate run alone, after a short warm-up at the same rate."""
    endpoints = infra.endpoints
    workers, ports = _start_workers(args, root, settings, env)
    try:
        groups = {f"scorer worker {i}": (process.pid, True) for i, process in enumerate(workers)}
        groups["postgres (server + backends)"] = (infra.postgres.process.pid, True)
        groups["broker"] = (infra.broker.process.pid, True)
        groups["producer (this process)"] = (os.getpid(), False)
        meter = CpuMeter(groups)
        print(
            f"{args.workers} worker(s) ready; warming up at {args.rate:g}/s for {WARMUP_SECONDS:g} s",
            flush=True,
        )
        warm = asyncio.run(
            replay(
                args.data,
                bootstrap_servers=endpoints.bootstrap_servers,
                topic=settings.topic_transactions,
                rate=args.rate,
                limit=int(args.rate * WARMUP_SECONDS),
            )
        )
        asyncio.run(_wait_stored(endpoints.database_url, warm.sent, timeout=120))
        print(f"now latency at {args.rate:g}/s for {args.seconds:g} s", flush=True)
        latency = _steady(args, endpoints, settings, meter, ports)
    finally:
        for process in workers:
            stop(process, timeout=30)
    return [latency.headline(args.rate)], latency.rows(args.rate)


def _streaming(
    args: argparse.Namespace, root: Path, settings: Settings, infra: Infra, env: dict[str, str]
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """Throughput, latency at a steady rate and the bare consumer: the end-to-end figures."""
    endpoints = infra.endpoints
    workers, ports = _start_workers(args, root, settings, env)
    try:
        print(f"{args.workers} worker(s) ready; replaying {args.data}", flush=True)
        groups = {f"scorer worker {i}": (process.pid, True) for i, process in enumerate(workers)}
        groups["postgres (server + backends)"] = (infra.postgres.process.pid, True)
        groups["broker"] = (infra.broker.process.pid, True)
        groups["producer (this process)"] = (os.getpid(), False)
        meter = CpuMeter(groups)

        started = []  # the CPU sample taken at the first produce, after the file is read
        report = asyncio.run(
            replay(
                args.data,
                bootstrap_servers=endpoints.bootstrap_servers,
                topic=settings.topic_transactions,
                progress=True,
                on_first_send=lambda: started.append(meter.sample()),
            )
        )
        last_commit = asyncio.run(_wait_stored(endpoints.database_url, report.sent, timeout=600))
        cpu_end = meter.sample()
        batches = sum(_metric(port, "fraudstream_batch_size_count") for port in ports)
        (cpu_start,) = started
        throughput = report.sent / (last_commit - report.first_sent_at)
        print(
            f"stored {report.sent:,} rows; now latency at {args.rate:g}/s for {args.seconds:g} s",
            flush=True,
        )

        latency = _steady(args, endpoints, settings, meter, ports)
        bare = asyncio.run(
            _bare_consumer(
                endpoints.bootstrap_servers, settings.topic_transactions, report.sent + latency.sent
            )
        )
        shadowed = None
        if not args.no_shadow:
            model = Path(env["FRAUDSTREAM_MODEL_PATH"])
            shadowed = _shadow_run(args, root, endpoints, settings, model, ports, workers)
    finally:
        for process in workers:
            stop(process, timeout=30)

    fast = per_100k(cpu_start, cpu_end, report.sent)
    budget = cpu_budget(0.20, bare, 100_000)  # per 100k events, at 0.20 x the bare consumer's rate
    ratios = [
        (
            "end-to-end throughput ÷ bare aiokafka consumer",
            f"**{ratio(throughput, bare)}** ({throughput:,.0f} ÷ {bare:,.0f})",
            ">= 0.20",
        ),
        (
            "CPU per event, throughput run (all processes) ÷ what the target leaves it "
            f"({os.cpu_count()} CPUs ÷ (0.20 × {bare:,.0f} msg/s))",
            f"{ratio(fast['total'], budget)} ({fast['total']:.2f} ÷ {budget:.2f} s per 100k)",
            "<= 1 for the target to be reachable",
        ),
        (
            "end-to-end throughput with a shadow ÷ without (the same replay, both warm)",
            f"**{ratio(shadowed.throughput, shadowed.without)}** "
            f"({shadowed.throughput:,.0f} ÷ {shadowed.without:,.0f})"
            if shadowed is not None
            else "not measured (--no-shadow)",
            "close to 1 (one vectorised call per batch)",
        ),
    ]
    rows = [
        ("rows replayed", f"{report.sent:,}"),
        ("scorer workers / partitions", f"{args.workers} / {args.partitions}"),
        ("end-to-end throughput (first produce → last commit)", f"{throughput:,.0f} tx/s"),
        ("produce rate (as fast as possible)", f"{report.rate_achieved:,.0f} tx/s"),
        ("mean scorer batch, throughput run", f"{report.sent / max(batches, 1):,.0f} events"),
        ("bare aiokafka consumer, same topic", f"{bare:,.0f} msg/s"),
        (
            "load average (1 min) at start / end of throughput run",
            f"{cpu_start.load:.2f} / {cpu_end.load:.2f}",
        ),
    ]
    rows += [(f"CPU s per 100k events, throughput run: {name}", f"{fast[name]:.2f}") for name in fast]
    ratios.append(latency.headline(args.rate))
    rows += latency.rows(args.rate)
    if shadowed is not None:
        rows += [
            (
                "end-to-end throughput with a shadow / without, replayed after run 1",
                f"{shadowed.throughput:,.0f} / {shadowed.without:,.0f} tx/s",
            ),
            ("shadow rows stored / rows replayed", f"{shadowed.shadow_rows:,} / {shadowed.sent:,}"),
            ("the shadow's model call, share of batch time", f"{shadowed.share:.1%}"),
        ]
    return ratios, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SAMPLE_PATH, help="CSV to replay (default: the sample)")
    parser.add_argument("--model", type=Path, help="model bundle (default: train one on the sample)")
    parser.add_argument("--workers", type=int, default=2, help="scorer worker processes")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the transactions topic")
    parser.add_argument("--rate", type=float, default=2000.0, help="steady rate for the latency phase")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the latency phase")
    parser.add_argument("--shadow-model", type=Path, help="the shadow's bundle (default: train one, seed 7)")
    parser.add_argument("--no-shadow", action="store_true", help="skip the shadow-cost replay")
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=("stream", "latency", "prefilled"),
        default=["stream", "prefilled"],
        help="stream: throughput, latency, bare consumer; latency: the steady-rate run alone (after a "
        "short warm-up), with its stage breakdown; prefilled: the Faust scorer ÷ the plain loop",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="plain loop / Faust pairs on the pre-filled topic"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="record each Faust worker with py-spy during the pre-filled run, into DIR",
    )
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"no such data file: {args.data}")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
