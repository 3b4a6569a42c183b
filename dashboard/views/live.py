"""What the Live page shows, as pure functions of the API's answers (no Dash, no HTTP).

Kept apart from the page module so it can be imported and tested without a Dash app
(`dash.register_page` only works once an app exists).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.components import (
    COLORS,
    empty_figure,
    fmt_int,
    fmt_num,
    fmt_pct,
    styled,
)


def kpi_values(stats: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The six KPI values and their sub-lines from an `/api/stats` answer."""
    latency = stats.get("latency_ms") or {}
    window = stats.get("window_minutes")
    values = [
        fmt_int(stats.get("volume")),
        fmt_int(stats.get("alerts")),
        fmt_pct(stats.get("alert_rate")),
        fmt_int(stats.get("true_alerts")),
        fmt_num(stats.get("throughput_per_s"), 1),
        fmt_num(latency.get("p99"), 1, " ms"),
    ]
    subs = [
        f"{fmt_int(stats.get('window_scored'))} in the last {window:g} min" if window else "",
        f"{fmt_int(stats.get('window_alerts'))} in the last {window:g} min" if window else "",
        f"fraud rate {fmt_pct(stats.get('fraud_rate'))} (labelled)",
        f"of {fmt_int(stats.get('frauds'))} labelled frauds",
        f"transactions/s, last {window:g} min" if window else "transactions/s",
        f"p50 {fmt_num(latency.get('p50'), 1)} · p95 {fmt_num(latency.get('p95'), 1)} ms",
    ]
    return values, subs


def review_precision(summary: dict[str, Any]) -> tuple[str, str]:
    """(value, sub-line) of the live precision from reviews, from `/api/feedback/summary`."""
    overall = summary.get("overall") or {}
    reviewed = overall.get("reviewed") or 0
    value = fmt_pct(overall.get("precision"), 1)
    return (
        value,
        f"{fmt_int(overall.get('confirmed_fraud'))} fraud of {fmt_int(reviewed)} reviewed · backlog {fmt_int(summary.get('backlog'))}",
    )


def timeseries_figure(series: dict[str, Any]) -> go.Figure:
    """Scored transactions per second (area) and alerts per bucket (bars) over the last minutes."""
    points = series.get("points") or []
    if not points or not any(p["scored"] for p in points):
        return empty_figure(f"Nothing scored in the last {series.get('minutes', 0):g} minutes.", height=360)
    bucket = max(1, int(series.get("bucket_seconds") or 1))
    t = [p["t"] for p in points]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Scatter(
            x=t,
            # the current bucket is partial: its rate is over the part that has passed
            y=[p["scored"] / max(float(p.get("seconds") or bucket), 1.0) for p in points],
            name="scored / s",
            mode="lines",
            line={"color": COLORS["live"], "width": 2, "shape": "hv"},
            fill="tozeroy",
            fillcolor="rgba(76,120,168,0.15)",
        ),
        secondary_y=False,
    )
    fig.add_trace(
        go.Bar(
            x=t,
            y=[p["alerts"] for p in points],
            name=f"alerts / {bucket // 60} min" if bucket % 60 == 0 else f"alerts / {bucket} s",
            marker_color=COLORS["alert"],
            opacity=0.85,
        ),
        secondary_y=True,
    )
    fig.update_yaxes(title_text="transactions / s", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(
        title_text="alerts", rangemode="tozero", showgrid=False, tickmode="auto", secondary_y=True
    )
    return styled(fig, height=360)


def _clock(value: str | None) -> str:
    if not value:
        return "–"
    try:
        return datetime.fromisoformat(value).strftime("%H:%M:%S")
    except ValueError:
        return value


def _label(value: int | None) -> str:
    return {1: "fraud", 0: "normal"}.get(value, "unknown") if value is not None else "unknown"


def alert_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat table rows (DataTable cells hold scalars only); `id` becomes the row id."""
    return [
        {
            "id": item["id"],
            "short_id": item["id"][:12],
            "scored_at": _clock(item.get("scored_at")),
            "amount": round(float(item["amount"]), 2),
            "score": round(float(item["score"]), 4),
            "label": _label(item.get("label")),
            "latency_ms": None if item.get("latency_ms") is None else round(float(item["latency_ms"]), 1),
        }
        for item in items
    ]


def explain_body(item: dict[str, Any]) -> dict[str, Any]:
    """The `/api/explain` body for a stored transaction: its raw inputs, as the event carries them."""
    body: dict[str, Any] = {"time": item["time"], "amount": item["amount"], **(item.get("features") or {})}
    return body
