"""What the Backtests page shows, as pure functions of the API's answers (no Dash, no HTTP).

Kept apart from the page module so it can be imported and tested without a Dash app
(`dash.register_page` only works once an app exists).
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from dashboard.components import (
    empty_figure,
    short_version,
    styled,
)

#: Headline metrics, in the order they are shown, when a run reports them.
HEADLINE = ("auprc", "roc_auc", "precision", "recall", "f1", "alert_rate")
PALETTE = ("#4c78a8", "#e45756", "#f58518", "#54a24b", "#b279a2", "#72b7b2", "#9d755d")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def headline(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The headline metrics a run reports, at its top level or under `overall`."""
    metrics = metrics or {}
    source = metrics.get("overall") if isinstance(metrics.get("overall"), dict) else metrics
    out = {}
    for name in HEADLINE:
        value = _number(source.get(name))
        if value is not None:
            out[name] = value
    return out


def run_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        scored = run.get("scored")
        expected = run.get("expected_count")
        rows.append(
            {
                "id": run["id"],
                "model_version": short_version(run.get("model_version")),
                "threshold": round(float(run["threshold"]), 4),
                "window": f"{run['time_from']:,.0f} – {run['time_to']:,.0f}",
                "status": run.get("status", ""),
                "rows": ""
                if expected is None
                else (f"{scored or 0:,}/{expected:,}" if scored is not None else f"{expected:,}"),
                **{k: round(v, 4) for k, v in headline(run.get("metrics")).items()},
            }
        )
    return rows


def runs_figure(runs: list[dict[str, Any]]) -> go.Figure:
    """Headline metrics of each run with metrics, in creation order."""
    done = sorted((r for r in runs if headline(r.get("metrics"))), key=lambda r: str(r.get("created_at")))
    if not done:
        return empty_figure(
            "No backtest has finished yet. Start one with `fraudstream backtest`.", height=340
        )
    labels = [
        f"{r['id'][:10]}<br>{short_version(r.get('model_version'), 8)} @ {float(r['threshold']):.3f}"
        for r in done
    ]
    fig = go.Figure()
    for i, name in enumerate(HEADLINE):
        values = [headline(r.get("metrics")).get(name) for r in done]
        if all(v is None for v in values):
            continue
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=values,
                name=name,
                mode="lines+markers",
                line={"color": PALETTE[i % len(PALETTE)], "width": 2},
            )
        )
    fig.update_yaxes(range=[0, 1.05])
    fig.update_xaxes(title_text="run (model @ threshold), oldest first", type="category")
    return styled(fig, height=340)


def slices_of(metrics: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per-slice metrics if the run reports them (a list of dicts under `slices`)."""
    slices = (metrics or {}).get("slices")
    return [s for s in slices if isinstance(s, dict)] if isinstance(slices, list) else []


def slices_figure(run: dict[str, Any]) -> go.Figure:
    slices = slices_of(run.get("metrics"))
    if not slices:
        return empty_figure("This run reports no per-slice metrics.", height=340)
    x_key = next((k for k in ("time_from", "start", "from", "t") if k in slices[0]), None)
    x = [s.get(x_key) for s in slices] if x_key else list(range(1, len(slices) + 1))
    fig = go.Figure()
    for i, name in enumerate(HEADLINE):
        values = [_number(s.get(name)) for s in slices]
        if all(v is None for v in values):
            continue
        fig.add_trace(
            go.Scatter(
                x=x,
                y=values,
                name=name,
                mode="lines+markers",
                line={"color": PALETTE[i % len(PALETTE)], "width": 2},
            )
        )
    if not fig.data:
        return empty_figure("This run's slices carry no headline metric.", height=340)
    fig.update_xaxes(title_text="slice start (data seconds)" if x_key else "slice")
    fig.update_yaxes(range=[0, 1.05])
    return styled(fig, height=340)
