"""The savings curve (Model and Backtests pages), a pure function of `/api/model/savings`.

Net savings (fraud amount caught − alerts × cost per alert) against the threshold, with
the live threshold, the run's own threshold, the best within the analysts' capacity, and
where the capacity ends (lower thresholds alert more than the analysts can review).
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from dashboard.components import COLORS, empty_figure, fmt_num, styled

NO_COST = "Set FRAUDSTREAM_COST_PER_ALERT (what reviewing an alert costs) to see net savings by threshold."


def capacity_threshold(curve: dict[str, Any]) -> float | None:
    """The lowest threshold whose alerts per day fit the capacity (None without one, or when none fits)."""
    capacity, per_day = curve.get("capacity_per_day"), curve.get("alerts_per_day")
    if capacity is None or per_day is None:
        return None
    fitting = [t for t, a in zip(curve["thresholds"], per_day, strict=True) if a <= capacity + 1e-9]
    return min(fitting) if fitting else None


def savings_figure(curve: dict[str, Any], *, height: int = 340) -> go.Figure:
    """Net savings vs threshold, with the live/current threshold, the best and the capacity marked."""
    if not curve.get("thresholds"):
        return empty_figure("No scored rows with a known label yet.", height=height)
    per_day = curve.get("alerts_per_day")
    hover = [
        f"threshold {t:.3f}<br>net savings {n:,.2f}<br>{a:,} alerts"
        + (f" ({d:,.1f}/day)" if per_day else "")
        + f"<br>caught {c:,.2f} · missed {m:,.2f}"
        for t, n, a, d, c, m in zip(
            curve["thresholds"],
            curve["net_savings"],
            curve["alerts"],
            per_day or [0.0] * len(curve["alerts"]),
            curve["amount_caught"],
            curve["amount_missed"],
            strict=True,
        )
    ]
    fig = go.Figure(
        go.Scatter(
            x=curve["thresholds"],
            y=curve["net_savings"],
            mode="lines",
            name="net savings",
            line={"color": COLORS["live"], "width": 2},
            hovertext=hover,
            hoverinfo="text",
        )
    )
    marks = [
        (curve.get("live_threshold"), "live", COLORS["threshold"], "dash"),
        (
            curve.get("current_threshold")
            if curve.get("current_threshold") != curve.get("live_threshold")
            else None,
            "run",
            COLORS["offline"],
            "dash",
        ),
        ((curve.get("best") or {}).get("threshold"), "best", COLORS["fraud"], "dot"),
        (capacity_threshold(curve), "capacity", COLORS["muted"], "dashdot"),
    ]
    for x, name, color, dash in marks:
        if x is not None:
            fig.add_vline(
                x=x,
                line={"color": color, "dash": dash, "width": 2},
                annotation_text=name,
                annotation_position="top",
            )
    fig.add_hline(y=0, line={"color": "#d1d5db", "width": 1})
    fig.update_xaxes(title_text="threshold (alert at score ≥)", range=[0, 1])
    fig.update_yaxes(title_text=f"net savings (cost {fmt_num(curve['cost_per_alert'], 2)} per alert)")
    return styled(fig, height=height)


def savings_caption(curve: dict[str, Any]) -> str:
    """One line: the best threshold and what it saves, against the current one."""
    best, current = curve.get("best"), curve.get("current")
    parts = []
    if best:
        parts.append(
            f"best {best['threshold']:.3f}: net {best['net_savings']:,.2f} with {best['alerts']:,} alerts"
        )
    else:
        parts.append(
            "no threshold saves more than it costs"
            + (" within capacity" if curve.get("capacity_per_day") else "")
        )
    if current:
        parts.append(
            f"current {current['threshold']:.3f}: net {current['net_savings']:,.2f} with {current['alerts']:,} alerts"
        )
    return " · ".join(parts) + f" ({curve['rows']:,} labelled rows)"
