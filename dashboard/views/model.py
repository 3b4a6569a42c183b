"""What the Model page shows, as pure functions of the API's answers (no Dash, no HTTP).

Kept apart from the page module so it can be imported and tested without a Dash app
(`dash.register_page` only works once an app exists).
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from dashboard.components import (
    COLORS,
    empty_figure,
    fmt_int,
    short_version,
    styled,
)

METRICS = (
    ("auprc", "AUPRC"),
    ("roc_auc", "ROC AUC"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("f1", "F1"),
)


def active_performance(perf: dict[str, Any]) -> dict[str, Any] | None:
    """The live performance of the active version (None when it has scored nothing labelled)."""
    for version in perf.get("versions", []):
        if version["model_version"] == perf.get("active_version"):
            return version
    return None


def offline_test(perf: dict[str, Any]) -> dict[str, Any]:
    """The bundle's test-split metrics of the ensemble (empty when the manifest has none)."""
    return ((perf.get("offline_evaluation") or {}).get("test") or {}).get("ensemble") or {}


def _offline_curve(perf: dict[str, Any], kind: str) -> tuple[list[float], list[float]] | None:
    curve = (((perf.get("offline_evaluation") or {}).get("curves") or {}).get("ensemble") or {}).get(kind)
    if not curve:
        return None
    if kind == "roc":
        return curve.get("fpr") or [], curve.get("tpr") or []
    return curve.get("recall") or [], curve.get("precision") or []


def curve_figure(perf: dict[str, Any], kind: str) -> go.Figure:
    """ROC (`kind="roc"`) or PR (`kind="pr"`): live on stored rows and offline on the test split."""
    live = active_performance(perf)
    offline = _offline_curve(perf, kind)
    fig = go.Figure()
    if offline and offline[0]:
        auc = offline_test(perf).get("roc_auc" if kind == "roc" else "auprc")
        name = "offline test" + (f" ({auc:.3f})" if auc is not None else "")
        fig.add_trace(
            go.Scatter(
                x=offline[0],
                y=offline[1],
                name=name,
                mode="lines",
                line={"color": COLORS["offline"], "width": 2, "dash": "dot"},
            )
        )
    if live and live.get("frauds") and live.get(kind, {}).get("x"):
        auc = live.get("roc_auc" if kind == "roc" else "auprc")
        name = "live" + (f" ({auc:.3f})" if auc is not None else "")
        fig.add_trace(
            go.Scatter(
                x=live[kind]["x"],
                y=live[kind]["y"],
                name=name,
                mode="lines",
                line={"color": COLORS["live"], "width": 2.5},
            )
        )
    if not fig.data:
        return empty_figure("No labelled frauds scored yet.", height=340)
    if kind == "roc":
        fig.add_trace(
            go.Scatter(
                x=[0, 1],
                y=[0, 1],
                mode="lines",
                showlegend=False,
                hoverinfo="skip",
                line={"color": "#d1d5db", "dash": "dash", "width": 1},
            )
        )
        fig.update_xaxes(title_text="false positive rate", range=[0, 1])
        fig.update_yaxes(title_text="true positive rate", range=[0, 1.02])
    else:
        fig.update_xaxes(title_text="recall", range=[0, 1])
        fig.update_yaxes(title_text="precision", range=[0, 1.02])
    return styled(fig, height=340)


def confusion_figure(perf: dict[str, Any]) -> go.Figure:
    """The live confusion matrix of the active version at its threshold."""
    live = active_performance(perf)
    if not live or not live.get("labelled"):
        return empty_figure("No labelled transactions scored yet.", height=340)
    c = live["confusion"]
    z = [[c["tn"], c["fp"]], [c["fn"], c["tp"]]]
    text = [[f"TN<br>{c['tn']:,}", f"FP<br>{c['fp']:,}"], [f"FN<br>{c['fn']:,}", f"TP<br>{c['tp']:,}"]]
    fig = go.Figure(
        go.Heatmap(
            z=[[v**0.25 for v in row] for row in z],  # fourth root: TP stays visible next to TN
            x=["alert: no", "alert: yes"],
            y=["normal", "fraud"],
            text=text,
            texttemplate="%{text}",
            textfont={"size": 15},
            colorscale=[[0, "#f3f4f6"], [1, COLORS["normal"]]],
            showscale=False,
            hoverinfo="skip",
        )
    )
    threshold = live.get("threshold")
    fig.update_xaxes(
        title_text="model decision" + (f" (score ≥ {threshold:.4f})" if threshold is not None else "")
    )
    fig.update_yaxes(title_text="ground truth", autorange="reversed")
    return styled(fig, height=340)


def metrics_figure(perf: dict[str, Any]) -> go.Figure:
    """Offline test metrics beside live metrics, same names, grouped bars."""
    offline = offline_test(perf)
    live = active_performance(perf) or {}
    names = [label for _, label in METRICS]
    off = [offline.get(key) for key, _ in METRICS]
    liv = [live.get(key) if live.get("frauds") else None for key, _ in METRICS]
    if all(v is None for v in off + liv):
        return empty_figure("No evaluation available yet.", height=360)
    fig = go.Figure()
    if any(v is not None for v in off):
        rows = offline.get("rows")
        fig.add_trace(
            go.Bar(
                x=names,
                y=off,
                name=f"offline test ({fmt_int(rows)} rows)",
                marker_color=COLORS["offline"],
                text=[f"{v:.3f}" if v is not None else "" for v in off],
                textposition="outside",
            )
        )
    if any(v is not None for v in liv):
        fig.add_trace(
            go.Bar(
                x=names,
                y=liv,
                name=f"live ({fmt_int(live.get('labelled'))} labelled rows)",
                marker_color=COLORS["live"],
                text=[f"{v:.3f}" if v is not None else "" for v in liv],
                textposition="outside",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.12], title_text="")
    return styled(fig, height=360)


def importance_figure(perf: dict[str, Any], top: int = 15) -> go.Figure:
    items = (perf.get("feature_importance") or [])[:top]
    if not items:
        return empty_figure("The model reports no feature importance.", height=360)
    fig = go.Figure(
        go.Bar(
            x=[i["importance"] for i in items],
            y=[i["feature"] for i in items],
            orientation="h",
            marker_color=COLORS["normal"],
        )
    )
    fig.update_yaxes(autorange="reversed", automargin=True)
    fig.update_xaxes(title_text=perf.get("importance_type") or "importance")
    return styled(fig, height=360)


def version_rows(models: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for v in models.get("versions", []):
        test = ((v.get("evaluation") or {}).get("test") or {}).get("ensemble") or {}
        rows.append(
            {
                "version": short_version(v["version"], 16),
                "created_at": str(v.get("created_at", ""))[:19].replace("T", " "),
                "threshold": round(float(v["threshold"]), 4),
                "auprc": None if test.get("auprc") is None else round(float(test["auprc"]), 4),
                "role": "champion" if v.get("active") else ("shadow" if v.get("shadow") else ""),
                "registered_by": v.get("registered_by") or "",
                "loaded": "yes" if v.get("loaded") else "",
            }
        )
    return rows


# ---------------------------------------------------------------------- champion and challenger

COMPARED = (("auprc", "AUPRC"), ("precision", "precision"), ("recall", "recall"))
DISAGREEMENT_COLUMNS = [
    {"name": "transaction", "id": "id"},
    {"name": "time (s)", "id": "time", "type": "numeric"},
    {"name": "amount", "id": "amount", "type": "numeric"},
    {"name": "fraud", "id": "label"},
    {"name": "champion score", "id": "score_a", "type": "numeric"},
    {"name": "shadow score", "id": "score_b", "type": "numeric"},
    {"name": "alerted by", "id": "alerted_by"},
]


def _interval_text(values: list[float] | None) -> str:
    return f"[{values[0]:+.3f}, {values[1]:+.3f}]" if values else "[n/a]"


def comparison_figure(comparison: dict[str, Any]) -> go.Figure:
    """AUPRC, precision and recall of a and b on the same rows, each with its 95% bootstrap interval."""
    if not comparison.get("rows") or not comparison.get("frauds"):
        return empty_figure(
            "No labelled fraud scored by both versions outside their training data yet.", height=340
        )
    fig = go.Figure()
    for side, color in (("a", COLORS["offline"]), ("b", COLORS["alert"])):
        version = comparison[side]
        values = [version.get(key) for key, _ in COMPARED]
        intervals = [version.get(f"{key}_interval") for key, _ in COMPARED]
        role = version.get("role") or "version"
        fig.add_trace(
            go.Bar(
                x=[label for _, label in COMPARED],
                y=values,
                name=f"{role} {short_version(version['version'])}",
                marker_color=color,
                text=[f"{v:.3f}" if v is not None else "" for v in values],
                textposition="outside",
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [
                        (i[1] - v) if i and v is not None else 0
                        for v, i in zip(values, intervals, strict=True)
                    ],
                    "arrayminus": [
                        (v - i[0]) if i and v is not None else 0
                        for v, i in zip(values, intervals, strict=True)
                    ],
                    "color": COLORS["muted"],
                },
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.15], title_text="")
    return styled(fig, height=340)


def comparison_summary(comparison: dict[str, Any]) -> list[str]:
    """Lines saying what was compared and what the paired bootstrap says of the difference."""
    a, b = comparison["a"], comparison["b"]
    lines = [
        f"{a.get('role') or 'a'} {short_version(a['version'])} against "
        f"{b.get('role') or 'b'} {short_version(b['version'])}: {fmt_int(comparison['rows'])} labelled rows "
        f"scored by both ({fmt_int(comparison['frauds'])} frauds), "
        f"{fmt_int(comparison['left_out_in_sample'])} left out as in-sample.",
    ]
    if comparison.get("auprc_difference") is not None:
        share = comparison.get("b_better_share")
        lines.append(
            f"AUPRC difference (shadow − champion) {comparison['auprc_difference']:+.3f}, 95% paired interval "
            f"{_interval_text(comparison.get('auprc_difference_interval'))} over {fmt_int(comparison['resamples'])} "
            "resamples" + (f"; the shadow is better in {share:.0%} of them." if share is not None else ".")
        )
    lines.append(
        f"They disagree on {fmt_int(comparison['only_a_alerts'] + comparison['only_b_alerts'])} alerts: "
        f"{fmt_int(comparison['only_a_alerts'])} only the champion raises ({fmt_int(comparison['only_a_frauds'])} "
        f"frauds), {fmt_int(comparison['only_b_alerts'])} only the shadow would ({fmt_int(comparison['only_b_frauds'])} frauds)."
    )
    if a.get("net_savings") is not None and b.get("net_savings") is not None:
        lines.append(
            f"Net savings at {comparison.get('cost_per_alert'):g} per alert: champion "
            f"{a['net_savings']:,.2f}, shadow {b['net_savings']:,.2f} "
            f"({b['net_savings'] - a['net_savings']:+,.2f})."
        )
    # the in-sample count is in the first line already
    return lines + [note for note in comparison.get("notes") or [] if "in-sample" not in note]


def disagreement_rows(comparison: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": d["id"][:16],
            "time": round(d["time"]),
            "amount": round(d["amount"], 2),
            "label": "yes" if d["label"] == 1 else "no",
            "score_a": round(d["score_a"], 4),
            "score_b": round(d["score_b"], 4),
            "alerted_by": "champion" if d["alert_a"] else "shadow",
        }
        for d in comparison.get("top_disagreements") or []
    ]
