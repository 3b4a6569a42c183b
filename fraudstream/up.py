"""`fraudstream up` and `fraudstream infra`: the whole stack on the embedded defaults."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import asyncpg

from core.db.registry import register_model
from core.db.urls import asyncpg_dsn, redacted
from core.ensemble import Ensemble
from core.prometheus import read_metric
from core.runtime.processes import port_open
from core.runtime.stack import Endpoints, Infra
from core.settings import Settings, settings_env
from fraudstream.supervisor import (
    Interrupted,
    ServiceFailed,
    ServiceSpec,
    Supervisor,
    python_module,
    wait_for_job,
)


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


async def _register(endpoints: Endpoints, ensemble: Ensemble, bundle: Path) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(endpoints.database_url))
    try:
        await register_model(conn, ensemble, bundle, activate=True)
    finally:
        await conn.close()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # loopback only: our own services
            return response.status < 500
    except OSError:
        return False


def _scorer_reading(metrics_url: str) -> bool:
    """Ready = the worker joined its consumer group and reads partitions (not just started)."""
    return (read_metric(metrics_url, "fraudstream_assigned_partitions", timeout=1) or 0) > 0


def service_specs(settings: Settings) -> list[ServiceSpec]:
    api = f"http://{settings.host}:{settings.api_port}"
    scorer_metrics = f"http://{settings.host}:{settings.scorer_web_port}/metrics"
    return [
        ServiceSpec(
            "scorer", python_module("fraudstream", "scorer"), ready=lambda: _scorer_reading(scorer_metrics)
        ),
        ServiceSpec("api", python_module("fraudstream", "api"), ready=lambda: _http_ok(f"{api}/")),
        ServiceSpec(
            "dashboard",
            python_module("fraudstream", "dashboard"),
            ready=lambda: port_open(settings.host, settings.dashboard_port),
        ),
    ]


def run_up(
    settings: Settings, *, replay: bool = True, replay_rate: int = 1000, data: Path | None = None
) -> int:
    check_ports_free(settings)
    ensemble = ensure_bundle(settings)
    infra = Infra(settings)
    print("Starting the embedded broker and PostgreSQL ...")
    try:
        endpoints = infra.start()
    except (RuntimeError, TimeoutError, OSError) as error:
        print(f"error: cannot start the infrastructure: {error}")
        return 1
    supervisor = Supervisor(settings.state_dir / "logs", {})
    supervisor.install_signal_handlers()
    try:
        asyncio.run(_register(endpoints, ensemble, settings.model_path.resolve()))
        supervisor.env = _child_env(settings, endpoints)
        for spec in service_specs(settings):
            print(f"Starting {spec.name} ...")
            supervisor.start(spec)
        _print_banner(settings, endpoints, ensemble)
        if replay:
            argv = python_module("fraudstream", "replay", "--rate", str(replay_rate))
            if data is not None:
                argv += ["--data", str(data)]
            job = supervisor.start(ServiceSpec("replay", argv, oneshot=True))
            print(
                f"Replaying {'the shipped sample' if data is None else data} at {replay_rate} transactions/s "
                f"(log: {supervisor.log_path('replay')}) ..."
            )
            code = wait_for_job(job, supervisor)
            supervisor.children.pop("replay", None)  # done either way; the services keep running
            if code is not None:
                print("Replay finished." if code == 0 else f"Replay failed with code {code}: see its log.")
        if not supervisor.stopping.is_set():
            print("Running. Press Ctrl-C to stop.")
            supervisor.wait()
        return 0
    except Interrupted:
        return 130
    except (ServiceFailed, RuntimeError, TimeoutError, OSError, asyncpg.PostgresError) as error:
        print(f"error: {error}")  # a service died or never got ready, or the database refused
        return 1
    finally:
        print("Stopping ...")
        try:
            supervisor.stop_all()
        finally:
            infra.stop()
        print("Stopped.")


def run_infra(settings: Settings) -> int:
    infra = Infra(settings)
    supervisor = Supervisor(settings.state_dir / "logs", {})
    supervisor.install_signal_handlers()
    try:
        endpoints = infra.start()
    except (RuntimeError, TimeoutError, OSError) as error:
        print(f"error: cannot start the infrastructure: {error}")
        return 1
    try:
        print("Embedded infrastructure is up. Services started by hand find it automatically, or export:")
        print(f"  export FRAUDSTREAM_KAFKA_BOOTSTRAP_SERVERS={endpoints.bootstrap_servers}")
        print(f"  export FRAUDSTREAM_DATABASE_URL={redacted(endpoints.database_url)}")
        print(
            "The broker keeps nothing on disk (memory storage); PostgreSQL keeps its data in "
            f"{settings.state_dir / 'postgres'}. Press Ctrl-C to stop."
        )
        supervisor.wait()
        return 0
    finally:
        infra.stop()
        print("Stopped.")


def _child_env(settings: Settings, endpoints: Endpoints) -> dict[str, str]:
    import os

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


def _print_banner(settings: Settings, endpoints: Endpoints, ensemble: Ensemble) -> None:
    api = settings.resolved_api_url
    print()
    print("fraudstream is up")
    print(f"  dashboard      http://{settings.host}:{settings.dashboard_port}/")
    print(f"  API docs       {api}/docs")
    print(
        f"  metrics        {api}/metrics  (scorer: http://{settings.host}:{settings.scorer_web_port}/metrics)"
    )
    print(f"  model          {ensemble.version} (threshold {ensemble.threshold:.4f})")
    print(f"  Kafka          {endpoints.bootstrap_servers} (embedded Tansu, memory only)")
    print(f"  PostgreSQL     {redacted(endpoints.database_url)}")
    print(f"  logs           {settings.state_dir / 'logs'}")
    print()
