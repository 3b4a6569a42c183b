"""What the Backtests page shows, as pure functions of the API's answers (no Dash, no HTTP).

Kept apart from the page module so it can be imported and tested without a Dash app
(`dash.register_page` only works once an app exists).
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.components import (
    COLORS,
    empty_figure,
    short_version,
    styled,
)

#: Headline metrics, in the order they are shown, when a run reports them.
HEADLINE = ("auprc", "precision", "recall", "f1", "alert_rate")
PALETTE = ("#4c78a8", "#e45756", "#f58518", "#54a24b", "#b279a2", "#72b7b2", "#9d755d")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def headline(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The headline metrics of a run (or of one slice of it); the alert rate is derived from counts."""
    metrics = metrics or {}
    source = metrics.get("overall") if isinstance(metrics.get("overall"), dict) else metrics
    out = {}
    for name in HEADLINE:
        value = _number(source.get(name))
        if value is not None:
            out[name] = value
    alerts, rows = _number(source.get("alerts")), _number(source.get("transactions"))
    if "alert_rate" not in out and alerts is not None and rows:
        out["alert_rate"] = alerts / rows
    return out


def run_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows: one per run, with its progress and headline metrics."""
    rows = []
    for run in runs:
        scored = run.get("scored")
        expected = run.get("expected_count")
        if expected is None:
            progress = "" if scored is None else f"{scored:,}"
        else:
            progress = f"{scored or 0:,}/{expected:,}" if scored is not None else f"{expected:,}"
        rows.append(
            {
                "id": run["id"],
                "model_version": short_version(run.get("model_version")),
                "threshold": round(float(run["threshold"]), 4),
                "window": f"{run['time_from']:,.0f} – {run['time_to']:,.0f}",
                "status": run.get("status", ""),
                "rows": progress,
                **{k: round(v, 4) for k, v in headline(run.get("metrics")).items()},
            }
        )
    return rows


def runs_figure(runs: list[dict[str, Any]]) -> go.Figure:
    """Headline metrics of each finished run, oldest first, labelled by model and threshold."""
    done = sorted((r for r in runs if headline(r.get("metrics"))), key=lambda r: str(r.get("created_at")))
    if not done:
        return empty_figure(
            "No backtest has finished yet. Start one with `fraudstream backtest`.", height=340
        )
    labels = [
        f"{r['id'][:15]}<br>{short_version(r.get('model_version'), 8)} @ {float(r['threshold']):.3f}"
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


def slices_of(metrics: dict[str, Any] | None) -> tuple[str | None, list[dict[str, Any]]]:
    """(the slice key, per-slice metrics) when the run reports them (`per_hour`, or `slices`)."""
    metrics = metrics or {}
    for key, x_key in (("per_hour", "hour"), ("slices", None)):
        slices = metrics.get(key)
        if isinstance(slices, list) and slices:
            rows = [s for s in slices if isinstance(s, dict)]
            if x_key is None:
                x_key = next((k for k in ("hour", "time_from", "start") if k in rows[0]), None)
            return x_key, rows
    return None, []


def slices_figure(run: dict[str, Any]) -> go.Figure:
    """Frauds caught and missed per slice (bars) with precision and recall (lines)."""
    x_key, slices = slices_of(run.get("metrics"))
    if not slices:
        return empty_figure("This run reports no per-slice metrics.", height=340)
    x = [s.get(x_key) for s in slices] if x_key else list(range(1, len(slices) + 1))
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for name, color in (("frauds_caught", COLORS["threshold"]), ("frauds_missed", COLORS["fraud"])):
        values = [_number(s.get(name)) for s in slices]
        if any(v is not None for v in values):
            fig.add_trace(
                go.Bar(x=x, y=values, name=name.replace("_", " "), marker_color=color, opacity=0.7),
                secondary_y=False,
            )
    for i, name in enumerate(("precision", "recall")):
        values = [_number(s.get(name)) for s in slices]
        if any(v is not None for v in values):
            fig.add_trace(
                go.Scatter(
                    x=x, y=values, name=name, mode="lines+markers", line={"color": PALETTE[i], "width": 2}
                ),
                secondary_y=True,
            )
    if not fig.data:
        return empty_figure("This run's slices carry no metric to plot.", height=340)
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title_text=f"{x_key} of the data" if x_key else "slice")
    fig.update_yaxes(title_text="frauds", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="precision / recall", range=[0, 1.05], showgrid=False, secondary_y=True)
    return styled(fig, height=340)
