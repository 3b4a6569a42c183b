"""The PR and ROC curves of the evaluated models as a PNG inside the bundle.

Drawn with matplotlib's Agg backend (no display needed); the same curves are stored as
data in the manifest, so the picture is a convenience, not the record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402

from core import metrics  # noqa: E402


def write_curves_png(
    path: Path, labels: np.ndarray, scores: dict[str, np.ndarray], table: dict[str, dict[str, Any]]
) -> None:
    """Precision-recall (left) and ROC (right) on the test stretch, one line per model."""
    figure, (pr_axes, roc_axes) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    for name, s in scores.items():
        pr = metrics.pr_curve(labels, s)
        roc = metrics.roc_curve(labels, s)
        label = f"{name} (AP {table[name]['auprc']:.3f})"
        pr_axes.step(pr["recall"], pr["precision"], where="post", label=label)
        roc_axes.plot(roc["fpr"], roc["tpr"], label=f"{name} (AUC {table[name]['roc_auc']:.3f})")
    pr_axes.set(xlabel="recall", ylabel="precision", title="Precision-recall, test stretch")
    pr_axes.set(xlim=(0, 1), ylim=(0, 1.02))
    roc_axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test stretch")
    roc_axes.set_xscale("log")
    roc_axes.set_xlim(1e-5, 1)
    for axes in (pr_axes, roc_axes):
        axes.grid(alpha=0.3)
        axes.legend(loc="lower left" if axes is pr_axes else "lower right", fontsize=8)
    figure.tight_layout()
    # Fixed metadata keeps the file's bytes (and so the bundle version) stable across runs.
    figure.savefig(path, format="png", metadata={"Software": None})
    plt.close(figure)
