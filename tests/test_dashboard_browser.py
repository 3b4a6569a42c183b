"""The dashboard in a real headless Chromium, against the real API and PostgreSQL.

One stack per module (a migrated database filled through `core.db.store.store_scored`
with real `Ensemble` scores of rows of the shipped sample and the bundle registered as the
champion, a scorer worker's heartbeat row kept fresh, the API under uvicorn in a thread
with a write and a read token, the dashboard as its own process via `python -m dashboard`
with a password), then: a visitor without a session is refused everywhere and signs in;
each page is checked for real content: KPI numbers equal the API's own stats, plots have
traces, the live page follows new rows, Try it shows the model's score, and the banner
reports a degraded stack and an unreachable API and clears when they recover.
Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import pytest
import uvicorn
from selenium.webdriver.common.by import By

from core.bundle_store import BundleStore
from core.dataset import SAMPLE_PATH, Dataset, load_csv
from core.db.store import ScoredRows, store_scored
from core.ensemble import Ensemble
from core.events import transaction_id
from core.settings import PROJECT_ROOT, Settings
from tests.browser import chromium, chromium_available, screenshot, wait_for
from tests.bundles import register

pytestmark = pytest.mark.skipif(
    not chromium_available(),
    reason="needs /usr/bin/chromium and /usr/bin/chromedriver (scripts/install-chromium.sh)",
)

SCREENSHOTS = PROJECT_ROOT / "artifacts" / "screenshots"
WRITE_TOKEN, READ_TOKEN = "dash-write-token-0123456789", "dash-read-token-0123456789"
PASSWORD = "correct horse battery staple"
SEED_ROWS = 2500
MORE_ROWS = 300
#: Rows from the end of the sample (the model's test stretch), so live metrics are honest.
SEED = slice(-(SEED_ROWS + MORE_ROWS), -MORE_ROWS)
MORE = slice(-MORE_ROWS, None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class ApiServer:
    """The real FastAPI app under uvicorn in a thread; stop() and start() again on the same port."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from api.main import create_app

        config = uvicorn.Config(
            create_app(self.settings), host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)
        self._server = self._thread = None

    def get(self, path: str, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {READ_TOKEN}"}
        response = httpx.get(self.url + path, params=params, headers=headers, timeout=10)
        response.raise_for_status()
        return response.json()


def score_rows(ensemble: Ensemble, data: Dataset, run_id: str = "") -> ScoredRows:
    batch = ensemble.score(data.raw)
    ids = []
    seen: dict[str, int] = {}
    for values in data.raw:
        first = transaction_id(values.tolist())
        seen[first] = seen.get(first, -1) + 1  # identical rows get the next occurrence number
        ids.append(transaction_id(values.tolist(), seen[first]))
    now = time.time()
    return ScoredRows(
        ids=ids,
        features=data.raw,
        labels=[int(v) for v in data.labels],
        run_ids=[run_id] * len(data),
        produced_at=[now] * len(data),
        model_version=ensemble.version,
        score=batch.score,
        recon_error=batch.recon_error,
        alert=batch.alert,
    )


def store(database_url: str, rows: ScoredRows) -> int:
    async def run() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            return await store_scored(conn, rows)
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def sample() -> Dataset:
    return load_csv(SAMPLE_PATH)


@pytest.fixture(scope="module")
def ensemble(model_bundle: Path) -> Ensemble:
    return Ensemble.load(model_bundle)


@pytest.fixture(scope="module")
def stack_database(infra) -> Iterator[str]:
    """One migrated database for the whole module (the pages share one stack)."""
    name, url = infra.create_database("dash")
    yield url
    infra.drop_database(name)


class Heartbeats:
    """A scorer worker's heartbeat row, upserted every second as a worker does, in a thread."""

    def __init__(self, database_url: str, version: str) -> None:
        self.database_url = database_url
        self.version = version
        self.state, self.reason = "ok", None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)

    def _run(self) -> None:
        async def beat() -> None:
            conn = await asyncpg.connect(self.database_url)
            try:
                while not self._stop.is_set():
                    await conn.execute(
                        "INSERT INTO scorer_workers (worker_id, host, pid, state, reason, model_version, "
                        "last_store_at) VALUES ('dash-worker', 'test', 1, $1, $2, $3, now()) "
                        "ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now(), state = EXCLUDED.state, "
                        "reason = EXCLUDED.reason, model_version = EXCLUDED.model_version",
                        self.state,
                        self.reason,
                        self.version,
                    )
                    await asyncio.sleep(1.0)
            finally:
                await conn.close()

        asyncio.run(beat())

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module")
def heartbeats(stack_database: str, ensemble: Ensemble) -> Iterator[Heartbeats]:
    with Heartbeats(stack_database, ensemble.version) as beating:
        yield beating


@pytest.fixture(scope="module")
def api(
    infra,
    stack_database: str,
    model_bundle: Path,
    sample: Dataset,
    ensemble: Ensemble,
    heartbeats: Heartbeats,
    tmp_path_factory,
):
    """The API on a free port, over a database holding the first SEED_ROWS sample rows, scored,
    with the bundle registered as the champion; reads and writes need a token."""
    stored = store(stack_database, score_rows(ensemble, sample.take(SEED)))
    assert stored == SEED_ROWS
    asyncio.run(
        register(stack_database, model_bundle, BundleStore(tmp_path_factory.mktemp("store")), activate=True)
    )
    settings = Settings(
        kafka_bootstrap_servers=infra.bootstrap_servers,
        database_url=stack_database,
        model_path=model_bundle,
        state_dir=tmp_path_factory.mktemp("dash-state"),
        api_token=WRITE_TOKEN,
        api_read_token=READ_TOKEN,
        _env_file=None,
    )
    server = ApiServer(settings, free_port())
    server.start()
    yield server
    server.stop()


@contextlib.contextmanager
def running_dashboard(log: Path, settings: dict[str, str]) -> Iterator[str]:
    """`python -m dashboard` as its own process on a free loopback port, with only these
    FRAUDSTREAM_* settings, refreshing every second; yields its URL, and checks it stopped cleanly."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_")}
    env.update({"FRAUDSTREAM_REFRESH_MS": "1000", **settings})
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dashboard", "--host", "127.0.0.1", "--port", str(port)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, log.read_text()


@pytest.fixture(scope="module")
def dashboard(api: ApiServer, tmp_path_factory) -> Iterator[str]:
    """The dashboard pointed at the API, with the write and read tokens and a password."""
    log = tmp_path_factory.mktemp("dash-log") / "dashboard.log"
    with running_dashboard(
        log,
        {
            "FRAUDSTREAM_API_URL": api.url,
            "FRAUDSTREAM_API_TOKEN": WRITE_TOKEN,
            "FRAUDSTREAM_API_READ_TOKEN": READ_TOKEN,
            "FRAUDSTREAM_DASHBOARD_PASSWORD": PASSWORD,
        },
    ) as url:
        yield url


def sign_in(driver: Any, dashboard: str, secret: str) -> None:
    driver.get(dashboard + "/login")
    field = wait_for(driver, lambda d: d.find_elements(By.ID, "secret"), 20, "no login form")[0]
    field.send_keys(secret)
    driver.find_element(By.ID, "sign-in").click()


@pytest.fixture(scope="module")
def browser(dashboard: str) -> Iterator[Any]:
    """A browser signed in to the dashboard."""
    with chromium() as driver:
        sign_in(driver, dashboard, PASSWORD)
        wait_for(
            driver,
            lambda d: d.find_elements(By.ID, "kpi-scored"),
            30,
            "signing in did not open the Live page",
        )
        yield driver


def test_nothing_is_served_before_signing_in(dashboard: str) -> None:
    """No page, callback, layout, bundle or asset without a session; a wrong secret is refused."""
    with httpx.Client(base_url=dashboard, timeout=10, follow_redirects=False) as anonymous:
        page = anonymous.get("/model")
        assert page.status_code == 302 and page.headers["location"] == "/login?next=%2Fmodel"
        callback = anonymous.post(
            "/_dash-update-component",
            json={
                "output": "kpi-scored.children",
                "outputs": {"id": "kpi-scored", "property": "children"},
                "inputs": [{"id": "live-tick", "property": "n_intervals", "value": 1}],
                "changedPropIds": [],
            },
        )
        assert callback.status_code == 401 and WRITE_TOKEN not in callback.text
        for path in (
            "/_dash-layout",
            "/_dash-dependencies",
            "/assets/style.css",
            "/_dash-component-suites/dash/dcc/async-graph.js",
        ):
            assert anonymous.get(path).status_code == 401, path
        wrong = anonymous.post("/login", data={"secret": "guess"})
        assert wrong.status_code == 401 and "fraudstream_session" not in wrong.cookies
        evil = anonymous.post("/login?next=//evil.example/x", data={"secret": PASSWORD})
        assert evil.status_code == 302 and evil.headers["location"] == "/"  # never an open redirect
        assert anonymous.get("/_dash-layout").status_code == 200  # the session cookie now opens it
    with chromium() as driver:  # a person: sent to the login page, refused, then let in
        driver.get(dashboard + "/")
        wait_for(
            driver, lambda d: d.current_url.endswith("/login?next=%2F"), 20, "not sent to the login page"
        )
        sign_in(driver, dashboard, "not the password")
        assert (
            "That is not it" in wait_for(driver, lambda d: d.find_elements(By.ID, "login-error"), 20)[0].text
        )
        screenshot(driver, SCREENSHOTS / "login.png")
        sign_in(driver, dashboard, PASSWORD)
        wait_for(
            driver, lambda d: d.find_elements(By.ID, "kpi-scored"), 30, "the right password did not let in"
        )
        driver.find_element(By.ID, "sign-out").click()
        wait_for(
            driver, lambda d: d.find_elements(By.ID, "secret"), 20, "signing out did not end the session"
        )


def text_of(driver: Any, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def graph_traces(driver: Any, graph_id: str) -> list[dict[str, Any]]:
    """The traces Plotly actually drew in a dcc.Graph (type, name, number of points)."""
    return driver.execute_script(
        """
        const plot = document.getElementById(arguments[0])?.querySelector('.js-plotly-plot');
        if (!plot || !plot.data) return [];
        return plot.data.map(t => ({type: t.type || 'scatter', name: t.name || '',
                                    n: (t.x || t.values || t.z || []).length}));
        """,
        graph_id,
    )


def wait_traces(driver: Any, graph_id: str, at_least: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
    return wait_for(
        driver,
        lambda d: (traces := graph_traces(d, graph_id)) and len(traces) >= at_least and traces,
        timeout,
        f"{graph_id} never drew {at_least} trace(s); it has {graph_traces(driver, graph_id)}",
    )


def test_live_page_shows_the_api_numbers_and_explains_an_alert(
    dashboard: str, api: ApiServer, browser
) -> None:
    stats = api.get("/api/stats")
    assert stats["volume"] == SEED_ROWS and stats["alerts"] > 0
    browser.get(dashboard + "/")
    wait_for(
        browser, lambda d: text_of(d, "kpi-scored") == f"{stats['volume']:,}", 30, "KPI never showed volume"
    )
    assert text_of(browser, "kpi-alerts") == f"{stats['alerts']:,}"
    assert text_of(browser, "kpi-caught") == f"{stats['true_alerts']:,}"
    assert text_of(browser, "kpi-alert-rate") == f"{100 * stats['alert_rate']:.2f}%"

    def p99_as_the_api_says(d: Any) -> bool:  # the latency window moves: the seed ages out of it
        p99 = api.get("/api/stats")["latency_ms"]["p99"]
        return text_of(d, "kpi-p99") == ("–" if p99 is None else f"{p99:,.1f} ms")

    wait_for(browser, p99_as_the_api_says, 30, "the p99 KPI never matched the API's")
    traces = wait_traces(browser, "live-timeseries", 2)
    assert [t["name"] for t in traces] == ["scored / s", "alerts / 1 min"]

    alerts = api.get("/api/alerts", limit=15)["items"]
    rows = wait_for(
        browser,
        lambda d: (
            len(found := d.find_elements(By.CSS_SELECTOR, "#alerts-table td[data-dash-column='short_id']"))
            == len(alerts)
            and found
        ),
    )
    assert rows[0].text == alerts[0]["id"][:12]  # newest first, as the API lists them
    rows[0].click()
    traces = wait_traces(browser, "live-explanation")
    assert traces[0]["type"] == "waterfall"
    wait_for(browser, lambda d: alerts[0]["id"][:12] in text_of(d, "live-explanation-caption"))
    assert not browser.find_element(By.ID, "status-banner").is_displayed()
    screenshot(browser, SCREENSHOTS / "live.png")


def test_live_page_follows_new_rows(
    dashboard: str, api: ApiServer, browser, stack_database, sample, ensemble
) -> None:
    browser.get(dashboard + "/")
    before = api.get("/api/stats")["volume"]
    wait_for(browser, lambda d: text_of(d, "kpi-scored") == f"{before:,}", 30)
    added = store(stack_database, score_rows(ensemble, sample.take(MORE)))
    assert added == MORE_ROWS
    after = api.get("/api/stats")["volume"]
    assert after == before + MORE_ROWS
    wait_for(browser, lambda d: text_of(d, "kpi-scored") == f"{after:,}", 30, "the live KPI did not update")


def test_explore_page_draws_the_distributions(dashboard: str, api: ApiServer, browser) -> None:
    browser.get(dashboard + "/explore")
    amount = wait_traces(browser, "explore-amount", 2)
    assert [t["name"].split()[0] for t in amount] == ["normal", "fraud"]
    dist = api.get("/api/distributions/amount")
    frauds = next(s["total"] for s in dist["series"] if s["name"] == "fraud")
    assert amount[1]["name"] == f"fraud ({frauds:,})"
    feature = wait_traces(browser, "explore-feature", 2)
    v14 = api.get("/api/distributions/feature/V14")  # at most the default 50 bins, fixed ones merged
    assert 1 < v14["bins"] <= 50 and all(t["n"] == v14["bins"] for t in feature)
    scatter = wait_traces(browser, "explore-scatter", 2)
    assert {t["name"].split()[0] for t in scatter} == {"normal", "fraud"}
    screenshot(browser, SCREENSHOTS / "explore.png")


def test_model_page_shows_curves_matrix_and_versions(
    dashboard: str, api: ApiServer, browser, ensemble
) -> None:
    browser.get(dashboard + "/model")
    roc = wait_traces(browser, "model-roc", 2)
    names = [t["name"] for t in roc]
    assert any(n.startswith("offline test") for n in names) and any(n.startswith("live") for n in names)
    wait_traces(browser, "model-pr", 2)
    assert wait_traces(browser, "model-confusion")[0]["type"] == "heatmap"
    assert len(wait_traces(browser, "model-metrics", 2)) == 2
    importance = wait_traces(browser, "model-importance")
    assert importance[0]["n"] > 0
    cells = wait_for(
        browser,
        lambda d: (
            (found := d.find_elements(By.CSS_SELECTOR, "#model-versions td[data-dash-column='version']"))
            and found
        ),
    )
    assert cells[0].text == ensemble.version[:16]
    screenshot(browser, SCREENSHOTS / "model.png")


def test_try_it_scores_a_real_fraud(dashboard: str, api: ApiServer, browser, ensemble) -> None:
    browser.get(dashboard + "/try")
    wait_for(browser, lambda d: d.find_elements(By.ID, "try-fraud"), 20)[0].click()
    fraud = api.get("/api/anomalies", limit=50)["items"][0]
    wait_for(browser, lambda d: fraud["id"][:12] in text_of(d, "try-source"), 20, "no example loaded")
    browser.find_element(By.ID, "try-score").click()
    shown = wait_for(browser, lambda d: d.find_elements(By.ID, "try-score-value"), 20, "no score shown")[
        0
    ].text
    raw = np.array([[fraud["time"], *(fraud["features"][f"V{i}"] for i in range(1, 29)), fraud["amount"]]])
    assert shown == f"{float(ensemble.score(raw).score[0]):.4f}"
    assert wait_traces(browser, "try-waterfall")[0]["type"] == "waterfall"
    assert wait_traces(browser, "try-gauge")[0]["type"] == "indicator"
    # The unedited example keeps its id: scoring it stored nothing new.
    assert "stored as a new transaction" not in text_of(browser, "try-result")
    screenshot(browser, SCREENSHOTS / "try_it.png")


def _record_backtests(database_url: str, bundle: Path, ensemble: Ensemble, data: Dataset) -> list[str]:
    """Two finished runs over the same rows at two thresholds, metrics computed as the CLI does."""
    from producer.backtest import RunSpec, create_run, finish_run

    async def run() -> list[str]:
        conn = await asyncpg.connect(database_url)
        try:
            ids = []
            for run_id, threshold in (("bt-dash-strict", 0.9), ("bt-dash-loose", 0.2)):
                model = ensemble.with_threshold(threshold)
                stored = await store_scored(conn, score_rows(model, data, run_id=run_id))
                spec = RunSpec(bundle, float(data.time.min()), float(data.time.max()) + 1)
                await create_run(conn, spec, model, run_id)
                await finish_run(conn, run_id, threshold, stored)
                ids.append(run_id)
            return ids
        finally:
            await conn.close()

    return asyncio.run(run())


def test_backtests_page_shows_runs_and_their_slices(
    dashboard: str,
    api: ApiServer,
    browser,
    stack_database: str,
    model_bundle: Path,
    ensemble: Ensemble,
    sample: Dataset,
) -> None:
    run_ids = _record_backtests(stack_database, model_bundle, ensemble, sample.take(SEED))
    assert {r["id"] for r in api.get("/api/backtests")["runs"]} >= set(run_ids)
    browser.get(dashboard + "/backtests")
    cells = wait_for(
        browser,
        lambda d: (
            len(c := d.find_elements(By.CSS_SELECTOR, "#backtests-table td[data-dash-column='id']")) >= 2
            and c
        ),
        30,
        "the runs never appeared in the table",
    )
    assert {cell.text for cell in cells} >= set(run_ids)
    assert wait_traces(browser, "backtests-metrics")
    cells[0].click()
    slices = wait_traces(browser, "backtest-slices")
    hours = len(np.unique(np.floor(sample.take(SEED).time / 3600)))
    assert hours > 1 and [trace["n"] for trace in slices if trace["type"] == "bar"] == [hours, hours]
    wait_for(browser, lambda d: cells[0].text in text_of(d, "backtest-caption"), 20)
    screenshot(browser, SCREENSHOTS / "backtests.png")


def test_banner_reports_an_unreachable_api_and_clears_when_it_returns(
    dashboard: str, api: ApiServer, browser
) -> None:
    browser.get(dashboard + "/")
    volume = api.get("/api/stats")["volume"]
    wait_for(browser, lambda d: text_of(d, "kpi-scored") == f"{volume:,}", 30)
    api.stop()
    try:
        banner = wait_for(
            browser,
            lambda d: (
                (b := d.find_element(By.ID, "status-banner")).is_displayed() and "unreachable" in b.text and b
            ),
            30,
            "no banner while the API is down",
        )
        assert api.url in banner.text
        wait_for(browser, lambda d: "unreachable" in text_of(d, "live-notice"), 15)
        screenshot(browser, SCREENSHOTS / "api-unreachable.png")
    finally:
        api.start()
    wait_for(
        browser, lambda d: not d.find_element(By.ID, "status-banner").is_displayed(), 30, "banner stayed"
    )
    wait_for(browser, lambda d: text_of(d, "kpi-scored") == f"{volume:,}", 30, "the KPIs did not come back")


def test_banner_says_when_the_stack_is_degraded_and_why(
    dashboard: str, api: ApiServer, browser, heartbeats
) -> None:
    browser.get(dashboard + "/")
    wait_for(
        browser,
        lambda d: not d.find_element(By.ID, "status-banner").is_displayed(),
        30,
        "banner at the start",
    )
    heartbeats.state, heartbeats.reason = "stalled", "900 events pending, nothing stored for 40 s"
    try:
        banner = wait_for(
            browser,
            lambda d: (
                (b := d.find_element(By.ID, "status-banner")).is_displayed() and "stalled" in b.text and b
            ),
            30,
            "no banner for a stalled worker",
        )
        assert banner.text == (
            "Degraded: scorer worker dash-worker is stalled: 900 events pending, nothing stored for 40 s."
        )
        assert "banner-warn" in banner.get_attribute("class")
        screenshot(browser, SCREENSHOTS / "degraded.png")
    finally:
        heartbeats.state, heartbeats.reason = "ok", None
    wait_for(
        browser, lambda d: not d.find_element(By.ID, "status-banner").is_displayed(), 30, "banner stayed"
    )
