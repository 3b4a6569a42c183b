"""`fraudstream up` and `fraudstream infra`: the whole stack on the embedded defaults, healing.

`up` starts the embedded broker and PostgreSQL, registers the model bundle (live only when
the registry has no champion yet), starts the scorer, the API and the dashboard, replays
the data, and then supervises everything (`fraudstream.supervisor`): a crashed or stuck
service is restarted with backoff, a dead broker or PostgreSQL is restarted on the same
port (and the same data folder), and only a crash loop stops the stack.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg

from core.db.registry import ACTIVATION_LOCK, active_model, register_model
from core.db.urls import asyncpg_dsn, redacted
from core.ensemble import Ensemble
from core.kafka import ensure_topics, scorer_group_id
from core.prometheus import read_metric
from core.runtime.lag import LagWatch
from core.runtime.postgres import STOP_SECONDS as POSTGRES_STOP_SECONDS
from core.runtime.processes import port_open
from core.runtime.stack import Endpoints, Infra, topic_partitions
from core.settings import Settings, settings_env
from fraudstream.supervisor import (
    STAGE_INFRA,
    STAGE_JOBS,
    STATUS_FILE,
    Child,
    CrashLoop,
    Interrupted,
    RestartPolicy,
    Service,
    Supervisor,
    child_launcher,
    describe_exit,
    python_module,
)

#: Timeout of one health probe; a service is restarted only after failing them for
#: `supervisor_unhealthy_seconds`.
PROBE_SECONDS = 2.0


def ensure_bundle(settings: Settings) -> Ensemble:
    """The configured bundle, training one on the shipped sample if none exists."""
    if not (settings.model_path / "manifest.json").exists():
        from core.dataset import SAMPLE_PATH
        from training.pipeline import train

        print(f"No model bundle at {settings.model_path}: training one on the shipped sample.")
        train(SAMPLE_PATH, settings.model_path)
    return Ensemble.load(settings.model_path)


def check_ports_free(settings: Settings) -> None:
    for name, port in (
        ("API", settings.api_port),
        ("dashboard", settings.dashboard_port),
        ("scorer web", settings.scorer_web_port),
    ):
        if port_open(settings.host, port):
            raise SystemExit(
                f"error: the {name} port {settings.host}:{port} is already in use "
                f"(another fraudstream? set FRAUDSTREAM_{name.upper().replace(' ', '_')}_PORT)"
            )


async def register_bundle(database_url: str, ensemble: Ensemble, bundle: Path) -> tuple[str, float]:
    """Register the bundle `up` serves; make it the champion only if there is none yet.

    Starting never changes which model is live: a champion someone promoted stays, even
    when this `up` brings another bundle. Returns the champion's (version, threshold).
    """
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ACTIVATION_LOCK)  # no promotion in between
            champion = await active_model(conn)
            await register_model(conn, ensemble, bundle, activate=champion is None)
            version, _path = champion or (ensemble.version, str(bundle))
            threshold = await conn.fetchval(
                "SELECT threshold FROM model_versions WHERE version = $1", version
            )
        return version, float(threshold)
    finally:
        await conn.close()


def answering(url: str) -> str | None:
    """A liveness probe: None when the server at `url` answers at all (any HTTP status)."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_SECONDS):  # loopback only: our own services
            return None
    except urllib.error.HTTPError:
        return None
    except OSError as error:
        return f"not answering on {url}: {error}"


def scorer_health(url: str) -> str | None:
    """The scorer's `/health`: 200 ok, 503 `{"status":"stalled","reason":...}`; None when healthy.

    A scorer without a health page (404) counts as healthy when it answers.
    """
    try:
        with urllib.request.urlopen(url, timeout=PROBE_SECONDS):
            return None
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        try:
            body = json.loads(error.read() or b"{}")
        except ValueError:
            body = {}
        status, reason = body.get("status"), body.get("reason")
        return (
            f"{status or f'HTTP {error.code}'}: {reason}" if reason else str(status or f"HTTP {error.code}")
        )
    except OSError as error:
        return f"not answering on {url}: {error}"


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # loopback only: our own services
            return response.status < 500
    except OSError:
        return False


def _scorer_reading(metrics_url: str) -> bool:
    """Ready = the worker joined its consumer group and reads partitions (not just started)."""
    return (read_metric(metrics_url, "fraudstream_assigned_partitions", timeout=1) or 0) > 0


def service_specs(settings: Settings, supervisor: Supervisor, env: dict[str, str]) -> list[Service]:
    api = f"http://{settings.host}:{settings.api_port}"
    scorer = f"http://{settings.host}:{settings.scorer_web_port}"
    dashboard = f"http://{settings.host}:{settings.dashboard_port}"

    def service(name: str, **options: object) -> Service:
        log_path = supervisor.log_path(name)
        argv = python_module("fraudstream", name)
        return Service(name, child_launcher(argv, log_path, env), log_path, **options)  # type: ignore[arg-type]

    return [
        service(
            "scorer",
            ready=lambda: _scorer_reading(f"{scorer}/metrics"),
            health=lambda: scorer_health(f"{scorer}/health"),
        ),
        service("api", ready=lambda: _http_ok(f"{api}/"), health=lambda: answering(f"{api}/")),
        service(
            "dashboard", ready=lambda: _http_ok(f"{dashboard}/"), health=lambda: answering(f"{dashboard}/")
        ),
    ]


def replay_service(
    settings: Settings, supervisor: Supervisor, env: dict[str, str], rate: int, data: Path | None
) -> Service:
    argv = python_module("fraudstream", "replay", "--rate", str(rate))
    if data is not None:
        argv += ["--data", str(data)]
    log_path = supervisor.log_path("replay")
    return Service(
        "replay",
        child_launcher(argv, log_path, env),
        log_path,
        stage=STAGE_JOBS,
        oneshot=True,
        stop_seconds=settings.replay_flush_seconds + 5,  # its own bound on the flush, then some
    )


def supervise_infra(supervisor: Supervisor, infra: Infra, settings: Settings) -> LagWatch:
    """Put the embedded broker and PostgreSQL under watch; start the lag view.

    A dead broker comes back on the same port and gets its topics again; the lag view
    taken before it died says how many unscored events went with it. PostgreSQL comes
    back on the same port and data folder (crash recovery keeps every committed row).
    The addresses do not change, so `runtime.json` and the services' settings stay valid.
    """
    assert infra.endpoints is not None
    endpoints = infra.endpoints
    lag = LagWatch(
        endpoints.bootstrap_servers, settings.topic_transactions, scorer_group_id(settings.topic_transactions)
    )
    lag.start()
    supervisor.extra_status = lambda: {"lag": _lag_status(lag), "state_dir": str(settings.state_dir)}

    def broker_back(child: Child) -> list[str]:
        asyncio.run(ensure_topics(endpoints.bootstrap_servers, topic_partitions(settings)))
        before = lag.before(child.exited_wall or 0.0)
        lag.resume()
        if before is None:
            lost = "an unknown number of events that were on the broker but not yet scored (no lag view yet)"
        else:
            age = max(0.0, (child.exited_wall or before.at) - before.at)
            lost = (
                f"{before.events:,} events that were on the broker but not yet scored "
                f"(as of {age:.0f} s before it stopped), and any produced since"
            )
        return [
            f"broker restarted on {endpoints.bootstrap_servers}: its memory storage lost the topics and "
            f"consumer offsets; topics recreated. Lost: {lost}. Stored rows are safe in PostgreSQL."
        ]

    if infra.broker is not None and infra.broker.process is not None:
        broker = infra.broker
        supervisor.adopt(
            Service(
                "broker",
                broker.launch,
                broker.log_path,
                ready=broker.accepting,
                stage=STAGE_INFRA,
                ready_timeout=30.0,
                on_exit=lambda _child: lag.pause(),
                after_restart=broker_back,
            ),
            broker.process,
        )
    if infra.postgres is not None and infra.postgres.process is not None:
        postgres = infra.postgres
        supervisor.adopt(
            Service(
                "postgres",
                postgres.launch,
                postgres.log_path,
                ready=postgres.accepting,
                stage=STAGE_INFRA,
                ready_timeout=60.0,
                stop_signal=signal.SIGINT,  # fast shutdown: disconnect clients, checkpoint, exit
                stop_seconds=max(settings.supervisor_stop_seconds, POSTGRES_STOP_SECONDS),
                after_restart=lambda _child: [
                    f"postgres restarted on {postgres.host}:{postgres.port} with its data in "
                    f"{postgres.data_dir}: crash recovery keeps every committed row"
                ],
            ),
            postgres.process,
        )
    return lag


def _lag_status(lag: LagWatch) -> dict | None:
    latest = lag.latest
    if latest is None:
        return None if lag.last_error is None else {"error": lag.last_error}
    return {
        "events": latest.events,
        "partitions": latest.partitions,
        "at": latest.at,
        "error": lag.last_error,
    }


def new_supervisor(settings: Settings) -> Supervisor:
    # The lag view's client logs every failed reconnect while the broker is down or being
    # restarted; the supervisor says what happened in its own words instead.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return Supervisor(
        settings.state_dir,
        RestartPolicy(
            crash_loop_restarts=settings.supervisor_crash_loop_restarts,
            crash_loop_seconds=settings.supervisor_crash_loop_seconds,
        ),
        unhealthy_seconds=settings.supervisor_unhealthy_seconds,
        stop_seconds=settings.supervisor_stop_seconds,
    )


def run_up(
    settings: Settings, *, replay: bool = True, replay_rate: int = 1000, data: Path | None = None
) -> int:
    check_ports_free(settings)
    supervisor = new_supervisor(settings)
    supervisor.install_signal_handlers()  # from here, Ctrl-C and SIGTERM stop everything started
    infra = Infra(settings)
    lag: LagWatch | None = None
    try:
        ensemble = ensure_bundle(settings)
        print("Starting the embedded broker and PostgreSQL ...")
        try:
            endpoints = infra.start()
        except (RuntimeError, TimeoutError, OSError) as error:
            print(f"error: cannot start the infrastructure: {error}")
            return 1
        lag = supervise_infra(supervisor, infra, settings)
        champion = asyncio.run(
            register_bundle(endpoints.database_url, ensemble, settings.model_path.resolve())
        )
        env = _child_env(settings, endpoints)
        for service in service_specs(settings, supervisor, env):
            print(f"Starting {service.name} ...")
            supervisor.start(service)
        _print_banner(settings, endpoints, champion, embedded_broker=infra.broker is not None)
        supervisor.running()
        if replay:
            job = supervisor.start(replay_service(settings, supervisor, env, replay_rate, data))
            print(
                f"Replaying {'the shipped sample' if data is None else data} at {replay_rate} transactions/s "
                f"(log: {job.service.log_path}) ..."
            )
            supervisor.watch(until=lambda: job.state == "exited")
            if job.state == "exited":
                print(
                    "Replay finished."
                    if job.last_exit == 0
                    else f"Replay {describe_exit(job.last_exit)}: see {job.service.log_path}."
                )
        if not supervisor.stopping.is_set():
            print("Running. Press Ctrl-C to stop.")
            supervisor.watch()
        return 0
    except Interrupted:
        return 130
    except (CrashLoop, RuntimeError, TimeoutError, OSError, asyncpg.PostgresError) as error:
        print(f"error: {error}")  # a crash loop, a service that never got ready, the database refused
        return 1
    finally:
        supervisor.stopping.set()  # a signal from now on forces, it no longer interrupts
        print("Stopping ...")
        _stop_everything(supervisor, infra, lag)
        print("Stopped.")


def run_infra(settings: Settings) -> int:
    supervisor = new_supervisor(settings)
    supervisor.install_signal_handlers()
    infra = Infra(settings)
    lag: LagWatch | None = None
    try:
        try:
            endpoints = infra.start()
        except (RuntimeError, TimeoutError, OSError) as error:
            print(f"error: cannot start the infrastructure: {error}")
            return 1
        lag = supervise_infra(supervisor, infra, settings)
        supervisor.running()
        print("Embedded infrastructure is up. Services started by hand find it automatically, or export:")
        print(f"  export FRAUDSTREAM_KAFKA_BOOTSTRAP_SERVERS={endpoints.bootstrap_servers}")
        print(f"  export FRAUDSTREAM_DATABASE_URL={redacted(endpoints.database_url)}")
        print(
            "The broker keeps nothing on disk (memory storage); PostgreSQL keeps its data in "
            f"{settings.state_dir / 'postgres'}. Either is restarted on its port if it dies. "
            "Press Ctrl-C to stop."
        )
        supervisor.watch()
        return 0
    except Interrupted:
        return 130
    except CrashLoop as error:
        print(f"error: {error}")
        return 1
    finally:
        supervisor.stopping.set()
        print("Stopping ...")
        _stop_everything(supervisor, infra, lag)
        print("Stopped.")


def _stop_everything(supervisor: Supervisor, infra: Infra, lag: LagWatch | None) -> None:
    if lag is not None:
        lag.stop()  # before the broker goes
    try:
        supervisor.stop_all()
    finally:
        infra.stop()  # runtime.json, and whatever the supervisor was not watching yet
        (supervisor.state_dir / STATUS_FILE).unlink(missing_ok=True)


def _child_env(settings: Settings, endpoints: Endpoints) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        settings_env(
            settings,
            FRAUDSTREAM_KAFKA_BOOTSTRAP_SERVERS=endpoints.bootstrap_servers,
            FRAUDSTREAM_DATABASE_URL=endpoints.database_url,
            FRAUDSTREAM_API_URL=settings.resolved_api_url,
        )
    )
    env.pop("DATABASE_URL", None)
    return env


def _print_banner(
    settings: Settings, endpoints: Endpoints, champion: tuple[str, float], *, embedded_broker: bool
) -> None:
    api = settings.resolved_api_url
    version, threshold = champion
    print()
    print("fraudstream is up")
    print(f"  dashboard      http://{settings.host}:{settings.dashboard_port}/")
    print(f"  API docs       {api}/docs")
    print(
        f"  metrics        {api}/metrics  (scorer: http://{settings.host}:{settings.scorer_web_port}/metrics)"
    )
    print(f"  model          {version} (threshold {threshold:.4f}; the registry's champion)")
    kind = " (embedded Tansu, memory only)" if embedded_broker else ""
    print(f"  Kafka          {endpoints.bootstrap_servers}{kind}")
    print(f"  PostgreSQL     {redacted(endpoints.database_url)}")
    print(f"  logs           {settings.state_dir / 'logs'}")
    print("  status         fraudstream status  (each process: pid, uptime, restarts)")
    print()
