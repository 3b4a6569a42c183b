"""What the Review page shows, as pure functions of the API's answers (no Dash, no HTTP).

Kept apart from the page module so it can be tested without a Dash app.
"""

from __future__ import annotations

from typing import Any

from dashboard.components import fmt_int, fmt_num, fmt_pct, short_version

#: The keys an analyst presses, and the button each one presses (shown on the page).
SHORTCUTS: dict[str, str] = {"f": "review-fraud", "n": "review-not-fraud", "s": "review-skip"}
VERDICTS: dict[str, str] = {"review-fraud": "fraud", "review-not-fraud": "not_fraud"}


def next_alert(
    items: list[dict[str, Any]], current: dict[str, Any] | None, skipped: list[str]
) -> dict | None:
    """The alert to show: the current one while it still waits for a verdict, else the first
    waiting one not skipped; when only skipped ones are left, the one skipped longest ago."""
    if current is not None:
        for item in items:
            if item["id"] == current["id"]:
                return current
    waiting = [item for item in items if item["id"] not in skipped]
    if waiting:
        return waiting[0]
    if not items:
        return None
    order = {tx: i for i, tx in enumerate(skipped)}
    return min(items, key=lambda item: order[item["id"]])


def skip(skipped: list[str], transaction_id: str, keep: int = 1000) -> list[str]:
    """The skipped list with `transaction_id` moved to its end (skipped last), at most `keep` long."""
    return [tx for tx in skipped if tx != transaction_id][-(keep - 1) :] + [transaction_id]


def explain_body(item: dict[str, Any]) -> dict[str, Any]:
    """The `/api/explain` body (the raw inputs) of a queue item."""
    return {"time": item["time"], **item["features"], "amount": item["amount"]}


def alert_facts(item: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs of what an analyst decides on."""
    threshold = item.get("threshold")
    return [
        ("Amount", fmt_num(item["amount"], 2)),
        (
            "Score",
            f"{item['score']:.4f}" + (f" (threshold {threshold:.4f})" if threshold is not None else ""),
        ),
        ("Model version", short_version(item["model_version"])),
        ("Data time", f"{item['time']:,.0f} s"),
        ("Scored at", str(item["scored_at"]).replace("T", " ")[:19] + " UTC"),
        ("Transaction", item["id"]),
    ]


def counts_text(summary: dict[str, Any], who: str | None) -> dict[str, str]:
    """The page's counters: the backlog, everyone's reviews and precision, and the reviewer's own."""
    overall = summary.get("overall") or {}
    mine = next((r for r in summary.get("reviewers", []) if who and r["who"] == who), None)
    return {
        "backlog": fmt_int(summary.get("backlog")),
        "reviewed": fmt_int(overall.get("reviewed")),
        "precision": fmt_pct(overall.get("precision"), 1),
        "mine": fmt_int(mine["decisions"] if mine else 0) if who else "–",
        "mine_sub": (
            f"{mine['fraud']} fraud · {mine['not_fraud']} not fraud · {mine['last_24h']} in 24 h"
            if mine
            else ("no verdicts yet" if who else "enter your name to review")
        ),
    }
