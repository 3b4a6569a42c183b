"""Markdown tables for benchmark output, so a run can be pasted into the README as it is.

>>> print(markdown_table(["measure", "value"], [("rows", "1,000"), ("rate", "5 tx/s")]))
| measure | value  |
|---------|--------|
| rows    | 1,000  |
| rate    | 5 tx/s |
"""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned markdown table; every cell is printed with `str`."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join([line, rule, *body])


def ratio(numerator: float, denominator: float) -> str:
    """`a / b` to two places, or a dash when the denominator is missing or zero."""
    return f"{numerator / denominator:.2f}" if denominator else "-"
