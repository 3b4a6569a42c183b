"""How the model does on the stored stream: live metrics per version beside the offline evaluation."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Response
from sqlalchemy.ext.asyncio import AsyncConnection

from api import queries
from api.cache import FOLDED, cached_response
from api.curves import f1, metrics_from_bins, ratio
from api.deps import Cache, Champion
from api.params import DEFAULT_RUN, RunId
from api.schemas import Confusion, Curve, FeatureImportance, ModelPerformance, VersionPerformance
from core.bins import SCORE_BINS

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
    bins: Annotated[
        int | None,
        Query(ge=10, le=SCORE_BINS.count, description="score bins for the curves: the fixed bins, merged"),
    ] = None,
    curves: Annotated[bool, Query(description="include the offline evaluation's curves")] = True,
) -> Response:
    """Precision/recall/F1 at the stored alert flag, AUPRC, ROC AUC and curves, per model version,
    on the run's labelled rows outside the version's in-sample stretch; plus the served
    champion's feature importance and offline evaluation.

    Read from the rollups (migration 0009), never the rows: counts per (version, class, score
    bin) of the run, minus the data hours that overlap the version's
    `manifest["training"]["data"]["in_sample"]` range (whole hours: an hour that holds one
    in-sample row is left out), so a model is never scored on what it was trained on
    (`in_sample_rows` says how many were left out). The score bins of `core.bins` (1080) are
    used as they are, or merged into `bins` runs of consecutive bins; each bin's lower edge is
    a threshold of the curves (`api.curves`). Pairs of a fraud and a normal row in one bin
    count as ties: the curves' error is at most those pairs' share (half of it for ROC AUC)."""

    async def compute(conn: AsyncConnection) -> ModelPerformance:
        everything = (await conn.execute(queries.score_rollup(run_id))).all()
        in_sample = (await conn.execute(queries.in_sample_score_rollup(run_id))).all()
        ranges = dict((await conn.execute(queries.in_sample_ranges())).all())
        thresholds = dict((await conn.execute(queries.model_thresholds())).all())
        thresholds[ensemble.version] = ensemble.threshold
        merged = SCORE_BINS.count if bins is None else bins
        group = np.arange(SCORE_BINS.count) * merged // SCORE_BINS.count
        firsts = np.searchsorted(group, np.arange(merged), side="left")
        lower_edges = [max(SCORE_BINS.lower(int(b)), 0.0) for b in firsts]
        # counts[version][class + 1, alert, merged bin]
        counts: dict[str, np.ndarray] = {}
        rows_per_version: dict[str, int] = {}
        left_out: dict[str, int] = {}
        for rows, sign, tally in ((everything, 1, rows_per_version), (in_sample, -1, left_out)):
            if not rows:
                continue
            version_of = np.array([row.model_version for row in rows])
            cls, bin_, n, alerts = np.array(
                [(row.cls, row.bin, row.n, row.alerts) for row in rows], np.int64
            ).T
            for version in np.unique(version_of).tolist():
                mine = version_of == version
                a = counts.setdefault(version, np.zeros((3, 2, merged), dtype=np.int64))
                at = (cls[mine] + 1, group[bin_[mine]])
                np.add.at(a[:, 1], at, sign * alerts[mine])
                np.add.at(a[:, 0], at, sign * (n[mine] - alerts[mine]))
                tally[version] = tally.get(version, 0) + int(n[mine].sum())
        versions = []
        for version in sorted(v for v, n in rows_per_version.items() if n):
            a = counts[version]
            p, n = a[2], a[1]
            tp, fn = int(p[1].sum()), int(p[0].sum())
            fp, tn = int(n[1].sum()), int(n[0].sum())
            m = metrics_from_bins(p.sum(axis=0), n.sum(axis=0), lower_edges=lower_edges)
            precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
            versions.append(
                VersionPerformance(
                    model_version=version,
                    threshold=thresholds.get(version),
                    rows=rows_per_version[version],
                    in_sample_rows=left_out.get(version, 0),
                    in_sample=ranges.get(version),
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
            score_bins=merged,
            versions=versions,
            feature_importance=[FeatureImportance(feature=k, importance=float(v)) for k, v in ranked],
            importance_type=importance.get("type") if isinstance(importance, dict) else None,
            offline_evaluation=offline or {},
        )

    key = ("performance", run_id, bins, curves, ensemble.version)
    return await cached_response(cache, key, run_id, compute, FOLDED)
