"""One model everywhere, end to end: a scorer worker and the API as processes on the real broker
and PostgreSQL, `fraudstream train --activate` twice into the same folder, a restart of the
API, and a promotion back to the first version (which the folder no longer holds).

Each time, both processes switch within seconds, and everything made after the switch
names the same version: the stored scores, the alerts on the topic, predictions (and
their stored rows) and explanations. Restarting the API with another bundle in
FRAUDSTREAM_MODEL_PATH changes nothing: the registry decides, nothing activates on start.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from core.bundle_store import BundleStore
from core.dataset import SAMPLE_PATH
from core.ensemble import Ensemble
from core.features import EVENT_FEATURES
from core.runtime.processes import free_port, port_open, spawn, stop, wait_until
from core.settings import Settings, settings_env
from producer.replay import replay
from tests.bundles import register
from tests.streaming_fixtures import fetch, read_topic

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
#: Windows of data time replayed one after the other (each holds ~3,000 sample rows and some frauds).
WINDOWS = [(0.0, 20_000.0), (20_000.0, 40_000.0), (40_000.0, 60_000.0), (60_000.0, 80_000.0)]


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_")}
    env.update(settings_env(settings, **extra))
    return env


class Api:
    """`python -m api.cli` on a free port, restartable."""

    def __init__(self, settings: Settings, model_path: Path, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = _env(
            settings, FRAUDSTREAM_MODEL_PATH=str(model_path), FRAUDSTREAM_MODEL_REFRESH_SECONDS="2"
        )
        self.log_dir = log_dir
        self.starts = 0
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.starts += 1
        log = self.log_dir / f"api-{self.starts}.log"
        argv = [sys.executable, "-m", "api.cli", "--port", str(self.port)]
        self.process = spawn(argv, log_path=log, env=self.env, cwd=ROOT)
        wait_until(
            lambda: port_open("127.0.0.1", self.port),
            timeout=120,
            what="the API",
            process=self.process,
            log_path=log,
        )

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, timeout=20)
            self.process = None

    def serving(self) -> str | None:
        return httpx.get(self.url + "/", timeout=10).json()["model_version"]


def train_into(folder: Path, settings: Settings, seed: int, log_dir: Path) -> str:
    """`fraudstream train --activate` into `folder`, as a person runs it; return the new version."""
    argv = [
        sys.executable,
        "-m",
        "fraudstream",
        "train",
        "--data",
        str(SAMPLE_PATH),
        "--out",
        str(folder),
        "--epochs",
        "1",
        "--max-rounds",
        "25",
        "--threads",
        "1",
        "--seed",
        str(seed),
        "--quiet",
        "--activate",
    ]
    done = subprocess.run(argv, cwd=ROOT, env=_env(settings), capture_output=True, text=True, timeout=600)
    (log_dir / f"train-{seed}.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "registered and made active" in done.stdout, done.stdout[-2000:]
    return Ensemble.load(folder).version


def replay_window(settings: Settings, window: tuple[float, float]) -> int:
    report = asyncio.run(
        replay(
            SAMPLE_PATH,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            topic=settings.topic_transactions,
            time_from=window[0],
            time_to=window[1],
            progress=False,
        )
    )
    return report.sent


def stored_versions(database_url: str, window: tuple[float, float]) -> tuple[int, set[str], list[str]]:
    """(rows stored in the window, the versions that scored them, ids of its alerts)."""
    rows = asyncio.run(
        fetch(
            database_url,
            "SELECT s.id, s.model_version, s.alert FROM scores s JOIN transactions t USING (run_id, id) "
            "WHERE s.run_id = '' AND t.time >= $1 AND t.time < $2",
            *window,
        )
    )
    return len(rows), {r["model_version"] for r in rows}, [r["id"] for r in rows if r["alert"]]


def wait_switched(api: Api, worker, version: str, reloads: int) -> None:
    """Both processes serve `version`: the API says so, and the worker reloaded once more."""
    wait_until(lambda: api.serving() == version, timeout=60, what=f"the API serving {version}")
    wait_until(
        lambda: worker.metric("fraudstream_model_reloads_total") >= reloads,
        timeout=60,
        what=f"the scorer worker switching to {version}",
        process=worker.process,
        log_path=worker.log_path,
    )


def check_phase(
    settings: Settings, api: Api, window: tuple[float, float], version: str, sample_row: list[float]
) -> None:
    """Replay a window, then: its stored scores, its alerts on the topic, a prediction (and its stored
    row) and an explanation all name `version`."""
    sent = replay_window(settings, window)
    assert sent > 1000
    wait_until(
        lambda: stored_versions(settings.database_url, window)[0] >= sent,
        timeout=120,
        what=f"{sent} rows stored",
    )
    count, versions, alert_ids = stored_versions(settings.database_url, window)
    assert (count, versions) == (sent, {version}), (count, versions)
    assert alert_ids, "every window holds frauds: some alert"
    messages = asyncio.run(
        read_topic(settings.kafka_bootstrap_servers, settings.topic_alerts, 10**6, timeout=5)
    )
    alerts = {key.decode(): orjson.loads(value) for key, value, _ in messages}
    assert {alerts[i]["model_version"] for i in alert_ids} == {version}

    body = dict(zip(EVENT_FEATURES, sample_row, strict=True)) | {
        "id": f"switch-{window[0]:.0f}",
        "run_id": "switch",
    }
    with httpx.Client(base_url=api.url, timeout=30) as client:
        predicted = client.post("/api/predict", json=body).json()
        explained = client.post("/api/explain", json=body).json()
        assert (predicted["model_version"], predicted["stored"], explained["model_version"]) == (
            version,
            True,
            version,
        )
        assert client.get("/health").json()["model"] == version
    row = asyncio.run(
        fetch(settings.database_url, "SELECT model_version FROM scores WHERE id = $1", body["id"])
    )
    assert [r["model_version"] for r in row] == [version]


def test_train_twice_into_one_folder_switches_scorer_and_api_and_a_restart_changes_nothing(
    settings: Settings, workers, model_bundle: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    store = BundleStore(settings.resolved_model_store)
    original = asyncio.run(register(settings.database_url, model_bundle, store, activate=True))
    sample_row = _first_row()

    worker = workers()  # FRAUDSTREAM_MODEL_PATH = the session bundle, the champion now
    api = Api(settings, model_bundle, logs)
    api.start()
    try:
        worker.wait_partitions(4)
        assert api.serving() == original

        folder = tmp_path / "models" / "default"
        first = train_into(folder, settings, seed=11, log_dir=logs)
        wait_switched(api, worker, first, reloads=1)
        check_phase(settings, api, WINDOWS[0], first, sample_row)

        second = train_into(folder, settings, seed=12, log_dir=logs)  # the same folder, rewritten
        assert second not in (first, original)
        wait_switched(api, worker, second, reloads=2)
        check_phase(settings, api, WINDOWS[1], second, sample_row)

        # A restart, with another bundle in FRAUDSTREAM_MODEL_PATH: the registry decides.
        promotions = _promotions(settings.database_url)
        api.stop()
        api.start()
        assert api.serving() == second
        assert _promotions(settings.database_url) == promotions
        check_phase(settings, api, WINDOWS[2], second, sample_row)

        # Back to the first version, which only the store still holds.
        assert Ensemble.load(folder).version == second
        promoted = subprocess.run(
            [sys.executable, "-m", "fraudstream", "model", "promote", first[:8], "--actor", "tests"],
            cwd=ROOT,
            env=_env(settings),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert promoted.returncode == 0, promoted.stderr
        wait_switched(api, worker, first, reloads=3)
        check_phase(settings, api, WINDOWS[3], first, sample_row)
    finally:
        api.stop()


def _first_row() -> list[float]:
    from core.dataset import load_csv

    return load_csv(SAMPLE_PATH).raw[0].tolist()


def _promotions(database_url: str) -> list[tuple[str, str]]:
    rows = asyncio.run(
        fetch(database_url, "SELECT version, actor FROM model_events WHERE action = 'promoted' ORDER BY id")
    )
    return [(r["version"], r["actor"]) for r in rows]
