"""The compose deployment, checked as far as a machine without a Docker engine allows."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from core.runtime.processes import free_port
from core.settings import Settings
from dashboard.settings import DashboardSettings
from fraudstream.cli import SERVICE_COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
OURS = {name: spec for name, spec in SERVICES.items() if spec.get("image") == "fraudstream:latest"}


def _cli_commands() -> set[str]:
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    return set(subparsers.choices) | set(SERVICE_COMMANDS)


def test_compose_has_every_part_of_the_deployment() -> None:
    assert {"kafka", "postgres", "setup", "scorer", "api", "dashboard", "replay", "model"} <= set(SERVICES)
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert set(COMPOSE["volumes"]) >= {"postgres-data", "models"}


def test_every_service_command_exists_in_the_image_entry_point() -> None:
    entrypoint = re.search(r'ENTRYPOINT \["(\w+)"\]', (ROOT / "Dockerfile").read_text()).group(1)
    assert entrypoint == "fraudstream"
    commands = _cli_commands()
    for name, spec in OURS.items():
        if "entrypoint" in spec:
            script = spec["entrypoint"][-1]
            used = re.findall(r"fraudstream (\w+)", script)
            assert used and set(used) <= commands, name
        else:
            assert spec["command"][0] in commands, name


@pytest.mark.parametrize("service", ["scorer", "api", "dashboard", "replay", "setup"])
def test_service_flags_parse(service: str) -> None:
    """The flags each service is given are accepted by that command's own parser."""
    import importlib
    import inspect

    argv = OURS[service]["command"]
    if argv[0] in SERVICE_COMMANDS:
        module = importlib.import_module(SERVICE_COMMANDS[argv[0]][0])
        parameters = inspect.signature(module.build_parser).parameters
        if parameters:  # parsers whose defaults come from the service's settings
            settings_type = next(iter(parameters.values())).annotation
            settings_cls = getattr(module, settings_type) if isinstance(settings_type, str) else settings_type
            parser = module.build_parser(settings_cls(_env_file=None))
        else:
            parser = module.build_parser()
        parser.parse_args(argv[1:])
    else:
        build_parser().parse_args(argv)


def test_environment_variables_are_the_ones_the_settings_read() -> None:
    known = {f"FRAUDSTREAM_{name.upper()}" for name in Settings.model_fields}
    # The dashboard reads its own settings (it imports nothing of core/).
    known_by_dashboard = known | {f"FRAUDSTREAM_{name.upper()}" for name in DashboardSettings.model_fields}
    for name, spec in OURS.items():
        variables = set(spec["environment"])
        allowed = known_by_dashboard if name == "dashboard" else known
        assert variables <= allowed, (name, variables - allowed)
    example = {
        line.split("=", 1)[0].lstrip("# ")
        for line in (ROOT / ".env.example").read_text().splitlines()
        if re.match(r"^#? ?[A-Z_]+=", line)
    }
    assert {v for v in example if v.startswith("FRAUDSTREAM_")} <= known_by_dashboard


def test_no_credentials_in_the_compose_file() -> None:
    text = (ROOT / "compose.yaml").read_text()
    assert re.search(r"POSTGRES_PASSWORD:\s*\$\{POSTGRES_PASSWORD:\?", text)
    for url in re.findall(r"postgresql://\S+", text):
        assert ":${POSTGRES_PASSWORD" in url
    assert ".env" in (ROOT / ".gitignore").read_text().split()


#: What each health check must ask, on the port the service listens on in its container.
HEALTH_PAGES = {
    "scorer": (Settings.model_fields["scorer_web_port"].default, "/health"),
    "api": (Settings.model_fields["api_port"].default, "/health"),
    "dashboard": (Settings.model_fields["dashboard_port"].default, "/"),
}


def _health_check(service: str, port: int) -> list[str]:
    """The service's health check as a command to run here, pointed at `port`."""
    test = SERVICES[service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test  # python is what the image surely has
    default_port, path = HEALTH_PAGES[service]
    url = f"http://127.0.0.1:{default_port}{path}"
    assert test[3].count(url) == 1, (service, test[3])
    return [sys.executable, "-c", test[3].replace(url, f"http://127.0.0.1:{port}{path}")]


class _Answer(BaseHTTPRequestHandler):
    answer: tuple[int, bytes] = (200, b"{}")

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        code, body = self.answer
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    "service, code, body, healthy",
    [
        ("scorer", 200, b'{"status":"ok","pending_events":0}', True),
        ("scorer", 503, b'{"status":"stalled","reason":"no store for 31 s"}', False),
        ("scorer", 404, b"{}", False),  # no health page: nothing says it is fine
        ("api", 200, b'{"status":"ok"}', True),
        ("api", 200, b'{"status":"degraded","reason":"scorer stalled"}', True),  # it serves
        ("api", 503, b'{"status":"unavailable","not_ready":["database"]}', False),
        ("dashboard", 200, b"<html></html>", True),
        ("dashboard", 500, b"", False),
    ],
)
def test_health_checks_tell_the_truth(service: str, code: int, body: bytes, healthy: bool) -> None:
    """Each check, run as Docker would, passes exactly when its service's own page says so."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Answer", (_Answer,), {"answer": (code, body)}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = subprocess.run(_health_check(service, server.server_port), capture_output=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) == healthy, result.stderr.decode()[-500:]


def test_health_checks_fail_when_nothing_answers() -> None:
    for service in HEALTH_PAGES:
        result = subprocess.run(_health_check(service, free_port()), capture_output=True, timeout=30)
        assert result.returncode != 0, service


def test_published_ports_bind_loopback_and_scorers_can_scale() -> None:
    for spec in SERVICES.values():
        for port in spec.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    scorer = SERVICES["scorer"]
    assert "container_name" not in scorer and "ports" not in scorer  # --scale scorer=N needs both absent
    for name in ("api", "dashboard", "scorer", "postgres", "kafka"):
        assert "healthcheck" in SERVICES[name], name


def test_dockerfile_installs_the_project_and_runs_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11" in text and "pip install" in text and "USER fraudstream" in text
    for folder in ("core", "producer", "scorer", "api", "dashboard", "training", "fraudstream", "data"):
        assert f"COPY {folder} {folder}" in text
