"""How the model does on the stored stream, and which model versions exist."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api import queries
from api.curves import f1, metrics_from_bins, ratio
from api.deps import Cache, Connection, LoadedEnsemble, run_watermark
from api.params import DEFAULT_RUN, RunId
from api.schemas import (
    Confusion,
    Curve,
    FeatureImportance,
    ModelList,
    ModelPerformance,
    ModelVersion,
    VersionPerformance,
)

router = APIRouter(prefix="/api", tags=["model"])


def evaluation_summary(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's evaluation without the (large) curves."""
    evaluation = manifest.get("evaluation")
    if not isinstance(evaluation, dict):
        return None
    return {key: value for key, value in evaluation.items() if key != "curves"}


def training_summary(manifest: dict[str, Any]) -> dict[str, Any] | None:
    training = manifest.get("training")
    return training.get("data") if isinstance(training, dict) else None


@router.get(
    "/model/performance", response_model=ModelPerformance, summary="Stored-stream metrics per version"
)
async def performance(
    conn: Connection,
    cache: Cache,
    ensemble: LoadedEnsemble,
    run_id: RunId = DEFAULT_RUN,
    bins: Annotated[int, Query(ge=10, le=1000, description="score bins for the curves")] = 1000,
    curves: Annotated[bool, Query(description="include the offline evaluation's curves")] = True,
) -> ModelPerformance:
    """Precision/recall/F1 at the stored alert flag, AUPRC, ROC AUC and curves, per model version,
    on the run's labelled rows; plus the loaded bundle's feature importance and offline evaluation."""

    async def compute() -> ModelPerformance:
        binned = (await conn.execute(queries.score_bins(run_id, bins))).all()
        rows_per_version = dict((await conn.execute(queries.version_rows(run_id))).tuples().all())
        thresholds = dict((await conn.execute(queries.model_thresholds())).tuples().all())
        thresholds[ensemble.version] = ensemble.threshold
        versions = []
        for version in sorted(rows_per_version):
            pos, neg = [0] * bins, [0] * bins
            tp = fp = tn = fn = 0
            for row in binned:
                if row.model_version != version:
                    continue
                if row.label == 1:
                    pos[row.bucket - 1] += row.n
                    tp, fn = (tp + row.n, fn) if row.alert else (tp, fn + row.n)
                else:
                    neg[row.bucket - 1] += row.n
                    fp, tn = (fp + row.n, tn) if row.alert else (fp, tn + row.n)
            m = metrics_from_bins(pos, neg)
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

    key = ("performance", run_id, bins, curves)
    return await cache.get(key, await run_watermark(conn, run_id), compute)


@router.get("/models", response_model=ModelList, summary="Model versions; which one is active")
async def models(conn: Connection, ensemble: LoadedEnsemble) -> ModelList:
    rows = (await conn.execute(queries.model_version_list())).all()
    versions = [
        ModelVersion(
            version=row.version,
            created_at=row.created_at,
            bundle_path=row.bundle_path,
            threshold=row.threshold,
            active=row.active,
            loaded=row.version == ensemble.version,
            evaluation=evaluation_summary(row.manifest),
            training=training_summary(row.manifest),
        )
        for row in rows
    ]
    active = next((v.version for v in versions if v.active), None)
    return ModelList(active=active, loaded=ensemble.version, versions=versions)
