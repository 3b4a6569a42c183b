"""The Review page in a real headless Chromium, through the real topics, scorer and database.

A scorer worker scores sample rows from the transactions topic (so the alerts, and the
queue, come from the real write path) and stores the labels topic; the API and the
dashboard (its own process, signed in) serve the page. An analyst confirms one alert by
clicking, dismisses the next by keyboard and skips a third: each verdict is recorded once
under her name (the worker, reading the same events back from the topic, writes nothing
again), the page moves on at once and its counts change. A verdict another analyst gives
on the alert being shown, published straight on the labels topic and stored by the
worker, takes that alert off the page too. A screenshot goes to docs/screenshots/.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from core.bundle_store import BundleStore
from core.dataset import SAMPLE_PATH, load_csv
from core.events import build_event, encode_event, transaction_id
from core.labels import build_label, encode_label
from core.runtime.processes import wait_until
from core.settings import PROJECT_ROOT
from tests.browser import chromium, chromium_available, screenshot, wait_for
from tests.bundles import register
from tests.streaming_fixtures import fetch, publish
from tests.test_dashboard_browser import ApiServer, free_port, running_dashboard, sign_in, wait_traces

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not chromium_available(), reason="needs /usr/bin/chromium and /usr/bin/chromedriver"),
]

WRITE_TOKEN, READ_TOKEN = "review-dash-write-token-0123", "review-dash-read-token-01234"
PASSWORD = "review page password"
SCREENSHOT = PROJECT_ROOT / "docs" / "screenshots" / "review.png"
FRAUDS, NORMALS = 25, 25


def count(database_url: str, sql: str, *args: object) -> int:
    return asyncio.run(fetch(database_url, sql, *args))[0][0]


@pytest.fixture
def scored(infra, settings, topics, workers, model_bundle, tmp_path) -> dict:
    """A worker that scored frauds and normals of the sample from the topic; the bundle is the champion."""
    asyncio.run(register(settings.database_url, model_bundle, BundleStore(tmp_path / "store"), activate=True))
    worker = workers()
    worker.wait_partitions(topics.partitions)
    data = load_csv(SAMPLE_PATH)
    rows = np.r_[np.flatnonzero(data.labels == 1)[:FRAUDS], np.flatnonzero(data.labels == 0)[:NORMALS]]
    messages = []
    for row in rows:
        values = data.raw[row].tolist()
        event_id = transaction_id(values)
        messages.append((event_id.encode(), encode_event(build_event(values, event_id=event_id)), None))
    asyncio.run(publish(infra.bootstrap_servers, topics.transactions, messages))
    wait_until(
        lambda: count(settings.database_url, "SELECT count(*) FROM scores") == len(rows),
        timeout=120,
        what="the worker to score the published rows",
        process=worker.process,
        log_path=worker.log_path,
    )
    alerts = count(settings.database_url, "SELECT count(*) FROM scores WHERE alert")
    assert alerts >= 5, "the sample's frauds should alert"
    return {"worker": worker, "alerts": alerts}


@pytest.fixture
def dashboard(settings, scored, tmp_path) -> Iterator[str]:
    """The API (write and read tokens) in a thread and `python -m dashboard` as its own process."""
    api = ApiServer(
        settings.model_copy(update={"api_token": WRITE_TOKEN, "api_read_token": READ_TOKEN}), free_port()
    )
    api.start()
    try:
        with running_dashboard(
            tmp_path / "dashboard.log",
            {
                "FRAUDSTREAM_API_URL": api.url,
                "FRAUDSTREAM_API_TOKEN": WRITE_TOKEN,
                "FRAUDSTREAM_API_READ_TOKEN": READ_TOKEN,
                "FRAUDSTREAM_DASHBOARD_PASSWORD": PASSWORD,
            },
        ) as url:
            yield url
    finally:
        api.stop()


def _read(read, attempts: int = 20):
    """Read from the page, again when Dash re-rendered the element between finding and reading it."""
    for _ in range(attempts - 1):
        try:
            return read()
        except StaleElementReferenceException:
            continue
    return read()


def shown(driver) -> str | None:
    """The transaction id of the alert on the page (None while nothing is shown)."""

    def read() -> str | None:
        found = driver.find_elements(By.ID, "review-alert")
        return found[0].get_attribute("data-id") if found else None

    return _read(read)


def text(driver, element_id: str) -> str:
    return _read(lambda: driver.find_element(By.ID, element_id).text)


def test_an_analyst_reviews_alerts_by_click_and_by_key(
    infra, settings, topics, scored, dashboard: str
) -> None:
    url, worker, alerts = settings.database_url, scored["worker"], scored["alerts"]
    with chromium() as driver:
        sign_in(driver, dashboard, PASSWORD)
        wait_for(
            driver, lambda d: d.find_elements(By.ID, "nav-review"), 30, "no Review link after signing in"
        )
        driver.find_element(By.ID, "nav-review").click()
        wait_for(driver, shown, 30, "the Review page shows no alert")
        wait_for(
            driver, lambda d: text(d, "review-backlog") == str(alerts), 30, "the backlog is not the alerts"
        )
        assert "f = confirm fraud" in text(driver, "review-shortcuts")
        assert wait_traces(driver, "review-waterfall")[0]["type"] == "waterfall"

        # a verdict needs a name: nothing is recorded without one
        first = shown(driver)
        driver.find_element(By.ID, "review-fraud").click()
        wait_for(driver, lambda d: "Enter your name" in text(d, "review-notice"), 20, "no request for a name")
        assert count(url, "SELECT count(*) FROM label_events") == 0 and shown(driver) == first

        driver.find_element(By.ID, "review-who").send_keys("alice")
        driver.find_element(By.ID, "review-note").send_keys("card reported stolen")
        driver.find_element(By.ID, "review-fraud").click()  # by click
        wait_for(
            driver, lambda d: shown(d) not in (None, first), 20, "the page did not move on after a click"
        )
        second = shown(driver)
        wait_for(driver, lambda d: text(d, "review-mine") == "1", 20, "the reviewer's count did not change")

        driver.find_element(By.TAG_NAME, "body").click()  # focus outside the text fields
        ActionChains(driver).send_keys("n").perform()  # by key
        wait_for(driver, lambda d: shown(d) not in (None, second), 20, "the page did not move on after 'n'")
        third = shown(driver)
        ActionChains(driver).send_keys("s").perform()  # skip: nothing recorded
        wait_for(driver, lambda d: shown(d) not in (None, third), 20, "the page did not move on after 's'")
        wait_for(
            driver, lambda d: text(d, "review-backlog") == str(alerts - 2), 20, "the backlog did not drop"
        )
        wait_for(driver, lambda d: text(d, "review-reviewed") == "2", 20, "the reviewed count did not change")
        assert text(driver, "review-precision") == "50.0%" and text(driver, "review-mine") == "2"
        screenshot(driver, SCREENSHOT)

        # recorded once each, under her name, and the worker read them back from the topic without a second row
        history = asyncio.run(
            fetch(
                url,
                "SELECT transaction_id, label, who, submitted_by, note FROM label_events ORDER BY stored_at",
            )
        )
        assert [tuple(r) for r in history] == [
            (first, 1, "alice", "admin", "card reported stolen"),
            (second, 0, "alice", "admin", None),
        ]
        wait_until(
            lambda: worker.metric("fraudstream_labels_consumed_total") == 2,
            timeout=60,
            what="the worker to read the verdicts from the labels topic",
        )
        # whichever stored a verdict first (the API or the worker), the other found it stored
        stored_by_worker = worker.metric("fraudstream_labels_stored_total")
        assert stored_by_worker + worker.metric("fraudstream_labels_redelivered_total") == 2
        assert count(url, "SELECT count(*) FROM label_events") == 2

        # another analyst decides the alert on screen elsewhere: through the topic and the worker, it leaves
        on_screen = shown(driver)
        elsewhere = build_label(transaction_id=on_screen, label=1, source="analyst", who="bob")
        asyncio.run(
            publish(
                infra.bootstrap_servers, topics.labels, [(on_screen.encode(), encode_label(elsewhere), None)]
            )
        )
        wait_for(driver, lambda d: shown(d) != on_screen, 30, "an alert decided elsewhere stayed on the page")
        wait_for(driver, lambda d: text(d, "review-reviewed") == "3", 30, "bob's verdict is not counted")
        assert worker.metric("fraudstream_labels_stored_total") == stored_by_worker + 1

        # the Live page shows the precision from reviews beside the alert rate
        driver.find_element(By.ID, "nav-live").click()
        wait_for(
            driver, lambda d: text(d, "kpi-review-precision") == "66.7%", 30, "no review precision on Live"
        )
    answer = httpx.get(dashboard + "/review", timeout=10, follow_redirects=False)
    assert answer.status_code == 302  # the page is behind the login like every other
