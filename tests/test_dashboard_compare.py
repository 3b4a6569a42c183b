"""The Model page's champion-and-shadow panel in a real headless Chromium, against the real API
and PostgreSQL: the sample stored with a champion's and a shadow's scores (the scorer's write),
the API under uvicorn, the dashboard as its own process. The panel shows the API's numbers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from core.ensemble import Ensemble
from core.settings import Settings
from tests.browser import chromium, chromium_available, screenshot, wait_for
from tests.shadow_fixtures import fill_with_shadow
from tests.test_dashboard_browser import (
    SCREENSHOTS,
    ApiServer,
    free_port,
    running_dashboard,
    sign_in,
    wait_traces,
)

pytestmark = pytest.mark.skipif(
    not chromium_available(),
    reason="needs /usr/bin/chromium and /usr/bin/chromedriver (scripts/install-chromium.sh)",
)
PASSWORD = "compare horse battery staple"


@pytest.fixture(scope="module")
def api(infra, model_bundle: Path, challenger_bundle: Path, tmp_path_factory) -> Iterator[ApiServer]:
    name, url = infra.create_database("dashcompare")
    tmp = tmp_path_factory.mktemp("dash-compare")
    champion, shadow = Ensemble.load(model_bundle), Ensemble.load(challenger_bundle)
    asyncio.run(fill_with_shadow(url, champion, shadow, model_bundle, challenger_bundle, tmp / "store"))
    settings = Settings(
        kafka_bootstrap_servers=infra.bootstrap_servers,
        database_url=url,
        model_path=model_bundle,
        state_dir=tmp / "state",
        _env_file=None,
    )
    server = ApiServer(settings, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        infra.drop_database(name)


@pytest.fixture(scope="module")
def dashboard(api: ApiServer, tmp_path_factory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("dash-compare-log") / "dashboard.log"
    settings = {"FRAUDSTREAM_API_URL": api.url, "FRAUDSTREAM_DASHBOARD_PASSWORD": PASSWORD}
    with running_dashboard(log, settings) as url:
        yield url


def test_model_page_compares_the_champion_with_the_shadow(dashboard: str, api: ApiServer) -> None:
    want: dict[str, Any] = api.get("/api/models/compare")
    assert want["rows"] > 1000 and want["frauds"] > 10 and want["top_disagreements"]
    with chromium() as browser:
        sign_in(browser, dashboard, PASSWORD)
        wait_for(browser, lambda d: d.find_elements(By.ID, "kpi-scored"), 30, "signing in failed")
        browser.get(dashboard + "/model")
        bars = wait_traces(browser, "model-compare", 2)
        assert [t["type"] for t in bars] == ["bar", "bar"]
        assert bars[0]["name"].startswith("champion ") and bars[1]["name"].startswith("shadow ")
        summary = wait_for(
            browser,
            lambda d: (
                (text := d.find_element(By.ID, "model-compare-summary").text) and "paired" in text and text
            ),
            30,
            "the comparison's summary never showed",
        )
        assert f"{want['rows']:,} labelled rows" in summary
        assert f"{want['auprc_difference']:+.3f}" in summary
        assert f"{want['left_out_in_sample']:,} left out" in summary
        cells = wait_for(
            browser,
            lambda d: d.find_elements(By.CSS_SELECTOR, "#model-disagreements td[data-dash-column='id']"),
            30,
            "no disagreement listed",
        )
        assert [c.text for c in cells] == [d["id"][:16] for d in want["top_disagreements"]]
        screenshot(browser, SCREENSHOTS / "model-compare.png")
