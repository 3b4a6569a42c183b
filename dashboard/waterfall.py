"""The explanation waterfall: how each feature moved one transaction's fraud log-odds.

Built from the API's `/api/explain` answer (TreeSHAP contributions, largest first):
the model's base log-odds, the `top` biggest contributions, everything else folded into
one bar, and the final log-odds, with the alert threshold drawn on the same scale so the
reader sees which features pushed the transaction over (or kept it under) the line.
"""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go

from dashboard.components import COLORS, styled


def logit(p: float) -> float:
    """Log-odds of a probability, clipped away from 0 and 1 so it stays finite."""
    p = min(max(float(p), 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def waterfall_figure(explanation: dict[str, Any], *, top: int = 12, height: int = 420) -> go.Figure:
    """A horizontal waterfall from base value to the model's log-odds for one transaction."""
    contributions = sorted(
        explanation.get("contributions", []), key=lambda c: abs(c["contribution"]), reverse=True
    )
    shown, rest = contributions[:top], contributions[top:]
    base = float(explanation["base_value"])
    labels = ["base value"]
    values = [base]
    measures = ["absolute"]
    hover = [f"model's average log-odds {base:+.3f}"]
    for item in shown:
        labels.append(item["feature"])
        values.append(float(item["contribution"]))
        measures.append("relative")
        hover.append(f"{item['feature']}: input {item.get('value', float('nan')):.3f} (scaled)")
    if rest:
        other = sum(float(c["contribution"]) for c in rest)
        labels.append(f"{len(rest)} other features")
        values.append(other)
        measures.append("relative")
        hover.append(f"sum of the {len(rest)} smaller contributions")
    total = base + sum(float(c["contribution"]) for c in contributions)
    labels.append("score (log-odds)")
    values.append(total)
    measures.append("total")
    hover.append(f"log-odds {total:+.3f} = score {explanation.get('score', float('nan')):.4f}")

    fig = go.Figure(
        go.Waterfall(
            orientation="h",
            y=labels,
            x=values,
            measure=measures,
            hovertext=hover,
            hoverinfo="text+x",
            increasing={"marker": {"color": COLORS["fraud"]}},
            decreasing={"marker": {"color": COLORS["normal"]}},
            totals={"marker": {"color": "#374151"}},
            connector={"line": {"color": "#d1d5db", "width": 1}},
        )
    )
    threshold = explanation.get("threshold")
    if threshold is not None:
        fig.add_vline(
            x=logit(threshold),
            line={"color": COLORS["threshold"], "dash": "dash", "width": 2},
            annotation_text=f"threshold {threshold:.3f}",
            annotation_position="top",
        )
    fig.update_yaxes(autorange="reversed", automargin=True)
    fig.update_xaxes(title_text="log-odds of fraud (red pushes towards fraud, blue away)")
    return styled(fig, height=height)
