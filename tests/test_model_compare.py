"""`GET /api/models/compare` against the real PostgreSQL and a served API: its numbers equal a
numpy/scikit-learn computation on the rows the scorer's write path stored.

The shipped sample is stored once for the module through `core.db.store.store_new` (what the
scorer calls), scored by the champion (the session bundle) and, as the shadow, by a second
bundle trained with another seed. Both were trained and validated on the sample's first 80%
of data time, so the comparison must leave those rows out and judge them on the rest.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from core.comparison import ComparedRows, InSample
from core.db.comparison import pair_query
from core.ensemble import Ensemble
from core.metrics import PairedResamples, interval
from tests.api_fixtures import api_settings, serve
from tests.shadow_fixtures import fill_with_shadow


@dataclass(frozen=True)
class Stored:
    base_url: str
    database_url: str
    ids: np.ndarray
    time: np.ndarray
    amount: np.ndarray
    label: np.ndarray
    champion: Ensemble
    shadow: Ensemble
    champion_score: np.ndarray
    champion_alert: np.ndarray
    shadow_score: np.ndarray
    shadow_alert: np.ndarray


@pytest.fixture(scope="module")
def stored(infra, model_bundle: Path, challenger_bundle: Path, tmp_path_factory) -> Iterator[Stored]:
    name, url = infra.create_database("compare")
    champion, shadow = Ensemble.load(model_bundle), Ensemble.load(challenger_bundle)
    tmp = tmp_path_factory.mktemp("compare")
    data, ids, got = asyncio.run(
        fill_with_shadow(url, champion, shadow, model_bundle, challenger_bundle, tmp / "store")
    )
    settings = api_settings(infra, url, model_bundle, tmp, cost_per_alert=COST)
    try:
        with serve(settings) as base_url:
            yield Stored(
                base_url,
                url,
                np.array(ids),
                data.time,
                data.raw[:, -1],
                data.labels.astype(int),
                champion,
                shadow,
                got["cs"],
                got["ca"],
                got["ss"],
                got["sa"],
            )
    finally:
        infra.drop_database(name)


COST = 2.5  # FRAUDSTREAM_COST_PER_ALERT of the API under test


def get(stored: Stored, **params) -> httpx.Response:
    with httpx.Client(base_url=stored.base_url, timeout=120) as client:
        return client.get("/api/models/compare", params=params)


def expected(stored: Stored, chosen: np.ndarray, resamples: int, seed: int) -> dict:
    """The comparison worked out here from the stored arrays (a = champion, b = shadow)."""
    y = stored.label[chosen]
    sa, sb = stored.champion_score[chosen], stored.shadow_score[chosen]
    aa, ab = stored.champion_alert[chosen], stored.shadow_alert[chosen]
    draws = PairedResamples(y, {"a": sa, "b": sb}, {"a": aa, "b": ab}).draw(resamples, seed)
    only_a, only_b = aa & ~ab, ab & ~aa
    disagree = np.flatnonzero(only_a | only_b)
    top = disagree[np.argsort(-np.abs(sb - sa)[disagree], kind="stable")[:20]]
    return {
        "rows": int(chosen.sum()),
        "frauds": int(y.sum()),
        "auprc_a": average_precision_score(y, sa),
        "auprc_b": average_precision_score(y, sb),
        "precision_a": (aa & (y == 1)).sum() / aa.sum(),
        "recall_a": (aa & (y == 1)).sum() / y.sum(),
        "precision_b": (ab & (y == 1)).sum() / ab.sum(),
        "recall_b": (ab & (y == 1)).sum() / y.sum(),
        "difference_interval": list(interval(draws.auprc["b"] - draws.auprc["a"])),
        "a_interval": list(interval(draws.auprc["a"])),
        "only_a": (int(only_a.sum()), int((only_a & (y == 1)).sum())),
        "only_b": (int(only_b.sum()), int((only_b & (y == 1)).sum())),
        "top": stored.ids[chosen][top].tolist(),
        "top_amounts": stored.amount[chosen][top].tolist(),
    }


def test_compare_equals_the_numbers_worked_out_from_the_stored_rows(stored: Stored) -> None:
    response = get(stored, hours=24, resamples=400, seed=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["a"]["version"] == stored.champion.version and body["a"]["role"] == "champion"
    assert body["b"]["version"] == stored.shadow.version and body["b"]["role"] == "shadow"
    assert body["label_source"] == "known_labels"

    end = float(stored.time.max())
    start = end - 24 * 3600
    assert body["time_to"] == end and body["time_from"] == start
    stretches = [InSample.of(e.manifest) for e in (stored.champion, stored.shadow)]
    assert all(s is not None and s.time_to < end for s in stretches)
    window = (stored.time >= start) & (stored.time <= end)
    inside = np.zeros_like(window)
    for s in stretches:
        inside |= s.contains(stored.time)
    assert (window & inside).sum() > 1000 and (window & ~inside).sum() > 1000  # both kinds present
    assert body["rows_in_window"] == int(window.sum())
    assert body["left_out_in_sample"] == int((window & inside).sum())
    assert not body["truncated"]

    want = expected(stored, window & ~inside, 400, 3)
    assert body["rows"] == want["rows"] and body["frauds"] == want["frauds"] > 10
    assert body["a"]["auprc"] == pytest.approx(want["auprc_a"], rel=1e-9)
    assert body["b"]["auprc"] == pytest.approx(want["auprc_b"], rel=1e-9)
    assert body["auprc_difference"] == pytest.approx(want["auprc_b"] - want["auprc_a"], rel=1e-9)
    for side in ("a", "b"):
        assert body[side]["precision"] == pytest.approx(want[f"precision_{side}"])
        assert body[side]["recall"] == pytest.approx(want[f"recall_{side}"])
    assert body["auprc_difference_interval"] == pytest.approx(want["difference_interval"])
    assert body["a"]["auprc_interval"] == pytest.approx(want["a_interval"])
    low, high = body["auprc_difference_interval"]
    assert low < high and body["resamples"] == 400 and body["seed"] == 3
    assert (body["only_a_alerts"], body["only_a_frauds"]) == want["only_a"]
    assert (body["only_b_alerts"], body["only_b_frauds"]) == want["only_b"]
    assert body["only_a_alerts"] + body["only_b_alerts"] > 0, "the two bundles never disagree: a weak test"
    assert [d["id"] for d in body["top_disagreements"]] == want["top"]
    assert [d["amount"] for d in body["top_disagreements"]] == pytest.approx(want["top_amounts"])
    assert any("in-sample" in note for note in body["notes"])
    kept = window & ~inside  # net savings: the amount its alerts caught minus their review cost
    frauds, amounts = stored.label[kept] == 1, stored.amount[kept]
    for side, alert in (("a", stored.champion_alert[kept]), ("b", stored.shadow_alert[kept])):
        flags = alert.astype(bool)
        want_net = float(amounts[flags & frauds].sum()) - COST * int(flags.sum())
        assert body[side]["net_savings"] == pytest.approx(want_net, rel=1e-9, abs=1e-6)
    assert body["cost_per_alert"] == COST

    # The same request again: the same numbers (seeded); the versions swapped: the difference too.
    assert get(stored, hours=24, resamples=400, seed=3).json() == body
    swapped = get(
        stored, a=stored.shadow.version, b=stored.champion.version[:10], resamples=400, seed=3
    ).json()
    assert swapped["auprc_difference"] == pytest.approx(-body["auprc_difference"], rel=1e-9)
    assert (swapped["only_a_alerts"], swapped["only_b_alerts"]) == (
        body["only_b_alerts"],
        body["only_a_alerts"],
    )


def test_compare_caps_the_rows_and_says_so_and_refuses_what_it_cannot_compare(stored: Stored) -> None:
    body = get(stored, hours=48, max_rows=5000, resamples=100).json()
    assert body["truncated"] and any("5000" in note for note in body["notes"])
    cut = np.sort(stored.time)[::-1][5000]  # the newest row beyond the cap: the window starts after it
    chosen = stored.time > cut
    assert body["time_from"] == pytest.approx(cut) and body["time_from"] > cut
    assert body["rows_in_window"] == int(chosen.sum()) <= 5000
    stretches = [InSample.of(e.manifest) for e in (stored.champion, stored.shadow)]
    n = int(chosen.sum())
    kept, left_out = ComparedRows(
        list(stored.ids[chosen]), stored.time[chosen], *[np.zeros(n)] * 4, *[np.zeros(n, bool)] * 2
    ).outside(*stretches)
    assert (body["rows"], body["left_out_in_sample"]) == (len(kept), left_out)

    # A window wholly inside the versions' training stretch: nothing to judge them on.
    early = get(stored, hours=2, until=20000, resamples=100).json()
    assert early["rows"] == 0 and early["left_out_in_sample"] == early["rows_in_window"] > 0
    assert early["a"]["auprc"] is None and early["auprc_difference_interval"] is None

    assert get(stored, a="abcdef0123").status_code == 404
    assert get(stored, a=stored.champion.version, b=stored.champion.version).status_code == 422
    assert get(stored, hours=1000).status_code == 422


def test_compare_reads_through_indexes_only(stored: Stored) -> None:
    """The window's shadow rows come from `ix_shadow_scores_version_time`, the rest by primary key
    (a plain join is planned as sequential scans of `scores` and `transactions` and hash joins), and
    the known label (`known_labels`, inlined) by probes of `label_events` for each row."""

    async def plan() -> tuple[str, list[str]]:
        conn = await asyncpg.connect(stored.database_url)
        verdicts = conn.transaction()
        await verdicts.start()
        try:  # verdicts on a tenth of the rows, as a reviewed stream has (rolled back after)
            await conn.execute(
                "INSERT INTO label_events (label_id, run_id, transaction_id, label, source, who, decided_at) "
                "SELECT 'plan-' || id, run_id, id, 1, 'analyst', 'plan', now() FROM transactions "
                "WHERE hashtext(id) % 10 = 0"
            )
            await conn.execute("ANALYZE label_events")
            rows = await conn.fetch(
                "EXPLAIN " + pair_query(),
                stored.champion.version,
                stored.shadow.version,
                165_000.0,  # a window: a small part of the table, as a day is of a stream's
                172_800.0,
            )
            text = "\n".join(r[0] for r in rows)
            # Partitions by data day: a day without rows (the days ahead, the default partition)
            # is planned as a scan of its zero pages. Any other sequential scan is a defect.
            scanned = re.findall(r"Seq Scan on (\w+)", text)
            filled = [
                name for name in scanned if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {name})")
            ]
            return text, filled
        finally:
            await verdicts.rollback()
            await conn.close()

    text, filled = asyncio.run(plan())
    assert "ix_shadow_scores_version_time" in text or "run_id_model_version_time_idx" in text, text
    assert filled == [], text
    assert "ix_label_events_transaction" in text, text  # the known label: probes per row
