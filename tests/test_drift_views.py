"""The Drift page's figures from a `GET /api/drift` answer (pure functions, no Dash app)."""

from __future__ import annotations

import numpy as np

from core.drift import MIN_ROWS_FOR_PSI, PSI_MAJOR, PSI_MODERATE, bin_counts, hour_drift, reference_histogram
from dashboard.views.drift import heatmap_figure, inputs, model_figure, mover_rows


def _answer() -> dict:
    rng = np.random.default_rng(0)
    base = rng.normal(size=5000)
    histogram = reference_histogram(base, bins=10)
    reference = {
        "features": {"V2": histogram, "V10": histogram, "Amount": histogram},
        "recon_error": histogram,
        "score": histogram,
        "alert_rate": {"expected": 0.01},
    }
    hours = []
    for hour, (shift, rows) in enumerate([(0.0, 800), (3.0, 800), (0.0, MIN_ROWS_FOR_PSI - 1)]):
        values = rng.normal(size=rows)
        counts = {
            name: bin_counts(histogram["edges"], values).tolist() for name in ("V2", "score", "recon_error")
        }
        counts |= {
            name: bin_counts(histogram["edges"], values + shift).tolist() for name in ("V10", "Amount")
        }
        hours.append(
            {"hour": hour, "time_from": hour * 3600.0, **hour_drift(reference, counts, rows, rows // 50)}
        )
    worst = sorted(
        (
            {"quantity": n, "psi": v, "level": h["level"][n], "hour": h["hour"]}
            for h in hours
            for n, v in h["psi"].items()
            if v is not None
        ),
        key=lambda m: -m["psi"],
    )[:3]
    return {
        "version": "v",
        "hours": hours,
        "worst": worst,
        "moderate": PSI_MODERATE,
        "major": PSI_MAJOR,
        "min_rows": MIN_ROWS_FOR_PSI,
    }


def test_the_heat_map_colours_psi_with_breaks_at_the_thresholds() -> None:
    answer = _answer()
    assert inputs(answer) == ["V2", "V10", "Amount"]  # natural order, model quantities apart
    heat = heatmap_figure(answer).data[0]
    z = np.array(heat.z, dtype=float)
    assert list(heat.y) == ["V2", "V10", "Amount"] and list(heat.x) == ["h0", "h1", "h2"]
    assert z[1, 1] >= PSI_MAJOR and z[2, 1] >= PSI_MAJOR and z[0, 1] < PSI_MODERATE  # the shifted inputs
    assert np.isnan(z[:, 2]).all()  # too few rows: blank, not zero
    scale = [stop for stop, _ in heat.colorscale]
    assert PSI_MODERATE / 0.5 in scale and PSI_MAJOR / 0.5 in scale
    assert list(heat.colorbar.tickvals)[1:3] == [PSI_MODERATE, PSI_MAJOR]


def test_movers_and_the_model_panels() -> None:
    answer = _answer()
    rows = mover_rows(answer)
    assert {r["quantity"] for r in rows[:2]} == {"V10", "Amount"} and rows[0]["level"] == "major"
    figure = model_figure(answer)
    names = [trace.name for trace in figure.data]
    assert names == ["score", "recon_error", "alert rate"]
    assert list(figure.data[2].y) == [h["alert_rate"] for h in answer["hours"]]
    assert "No scored rows" in heatmap_figure({"hours": []}).layout.annotations[0].text
