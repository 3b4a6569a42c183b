"""How the model does on the stored stream: live metrics per version beside the offline evaluation."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Response
from sqlalchemy.ext.asyncio import AsyncConnection

from api import queries
from api.cache import FULL_SCAN, cached_response
from api.curves import f1, metrics_from_bins, ratio
from api.deps import Cache, Champion
from api.params import DEFAULT_RUN, RunId
from api.schemas import Confusion, Curve, FeatureImportance, ModelPerformance, VersionPerformance
from api.totals import read_run_totals

router = APIRouter(prefix="/api", tags=["model"])


def evaluation_summary(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's evaluation without the (large) curves."""
    evaluation = manifest.get("evaluation")
    if not isinstance(evaluation, dict):
        return None
    return {key: value for key, value in evaluation.items() if key != "curves"}


@router.get(
    "/model/performance", response_model=ModelPerformance, summary="Stored-stream metrics per version"
)
async def performance(
    cache: Cache,
    ensemble: Champion,
    run_id: RunId = DEFAULT_RUN,
    bins: Annotated[int, Query(ge=10, le=1000, description="score bins for the curves")] = 1000,
    curves: Annotated[bool, Query(description="include the offline evaluation's curves")] = True,
) -> Response:
    """Precision/recall/F1 at the stored alert flag, AUPRC, ROC AUC and curves, per model version,
    on the run's labelled rows; plus the served champion's feature importance and offline evaluation.

    PostgreSQL counts rows per (version, score bin, alert) in one pass over `scores`, and the
    same for the frauds (partial index) and unlabelled rows (if any); negatives are the rest.
    The curves come from cumulative sums over the bins (`api.curves`)."""

    async def compute(conn: AsyncConnection) -> ModelPerformance:
        everything = (await conn.execute(queries.score_bins(run_id, bins))).all()
        frauds = (await conn.execute(queries.score_bins_of_label(run_id, bins, 1))).all()
        unlabelled = []
        if (await read_run_totals(conn, run_id)).unlabelled:
            unlabelled = (await conn.execute(queries.score_bins_of_label(run_id, bins, None))).all()
        thresholds = dict((await conn.execute(queries.model_thresholds())).all())
        thresholds[ensemble.version] = ensemble.threshold
        rows_per_version: dict[str, int] = {}
        # counts[version][alert] -> per-bin arrays of positives and negatives
        pos: dict[str, np.ndarray] = {}
        neg: dict[str, np.ndarray] = {}
        for row in everything:
            rows_per_version[row.model_version] = rows_per_version.get(row.model_version, 0) + row.n
            neg.setdefault(row.model_version, np.zeros((2, bins), dtype=np.int64))[
                int(row.alert), row.bucket - 1
            ] += row.n
        for rows, is_fraud in ((frauds, True), (unlabelled, False)):
            for row in rows:
                neg[row.model_version][int(row.alert), row.bucket - 1] -= row.n
                if is_fraud:
                    pos.setdefault(row.model_version, np.zeros((2, bins), dtype=np.int64))[
                        int(row.alert), row.bucket - 1
                    ] += row.n
        versions = []
        for version in sorted(rows_per_version):
            p = pos.get(version, np.zeros((2, bins), dtype=np.int64))
            n = neg[version]
            tp, fn = int(p[1].sum()), int(p[0].sum())
            fp, tn = int(n[1].sum()), int(n[0].sum())
            m = metrics_from_bins(p.sum(axis=0), n.sum(axis=0))
            precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
            versions.append(
                VersionPerformance(
                    model_version=version,
                    threshold=thresholds.get(version),
                    rows=rows_per_version[version],
                    labelled=tp + fp + tn + fn,
                    frauds=tp + fn,
                    confusion=Confusion(tp=tp, fp=fp, tn=tn, fn=fn),
                    precision=precision,
                    recall=recall,
                    f1=f1(precision, recall),
                    auprc=m.auprc,
                    roc_auc=m.roc_auc,
                    roc=Curve(x=m.fpr, y=m.tpr, thresholds=m.thresholds),
                    pr=Curve(x=m.recall, y=m.precision, thresholds=m.thresholds),
                )
            )
        importance = ensemble.manifest.get("evaluation", {}).get("feature_importance", {})
        values = importance.get("values", {}) if isinstance(importance, dict) else {}
        ranked = sorted(values.items(), key=lambda item: -item[1])
        offline = ensemble.manifest.get("evaluation", {}) if curves else evaluation_summary(ensemble.manifest)
        return ModelPerformance(
            run_id=run_id,
            active_version=ensemble.version,
            score_bins=bins,
            versions=versions,
            feature_importance=[FeatureImportance(feature=k, importance=float(v)) for k, v in ranked],
            importance_type=importance.get("type") if isinstance(importance, dict) else None,
            offline_evaluation=offline or {},
        )

    key = ("performance", run_id, bins, curves, ensemble.version)
    return await cached_response(cache, key, run_id, compute, FULL_SCAN)
