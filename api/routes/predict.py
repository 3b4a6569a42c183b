"""Score one transaction (and store it), explain one, or publish one to Kafka."""

from __future__ import annotations

import time
import uuid

import numpy as np
from aiokafka.errors import KafkaError
from fastapi import APIRouter, HTTPException, Response, status

from api.auth import READS
from api.deps import AppSettings, Champion, Metrics, PredictorDep, PublisherDep
from api.errors import unavailable
from api.explain import contributions
from api.predictor import NoModelLoaded, Overloaded, PredictRequest
from api.schemas import ExplanationOut, Prediction, Problem, Published
from core.db.schema import LIVE_RUN
from core.events import EventError, TransactionIn, build_event, encode_event
from core.features import EVENT_FEATURES

router = APIRouter(prefix="/api", tags=["predict"])

_AUTH_RESPONSES = {
    401: {"model": Problem, "description": "missing or unknown bearer token"},
    403: {"model": Problem, "description": "a read-only token"},
}


def check_body(body: TransactionIn) -> list[float]:
    """The body through the transaction contract (the same check as every event); 422 naming the field."""
    try:
        _, values, _, _, _ = body.checked()
    except EventError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
    return list(values)


@router.post(
    "/predict",
    response_model=Prediction,
    summary="Score one transaction with the champion and store it",
    responses={
        **_AUTH_RESPONSES,
        503: {"model": Problem, "description": "overloaded (Retry-After), no model, or the database is down"},
    },
)
async def predict(body: TransactionIn, predictor: PredictorDep, metrics: Metrics) -> Prediction | Response:
    """Stored like a scored event (live run unless `run_id` is given); `id` is generated when absent.
    `stored` is false when a row with that id was already stored (it is not overwritten).
    `model_version` and `threshold` are those of the champion that scored it."""
    received = time.time()
    values = check_body(body)
    event_id = body.id or uuid.uuid4().hex
    run_id = body.run_id or LIVE_RUN
    try:
        result = await predictor.predict(PredictRequest(event_id, run_id, values, body.label, received))
    except Overloaded as overloaded:
        metrics.shed.labels("predict_queue_full").inc()
        return unavailable(str(overloaded), overloaded.retry_after)
    except NoModelLoaded:
        return unavailable("no model is loaded (see /health)", 5)
    metrics.predictions.inc()
    if result.alert:
        metrics.alerts.inc()
    return Prediction(
        id=event_id,
        run_id=run_id,
        score=result.score,
        alert=result.alert,
        recon_error=result.recon_error,
        threshold=result.threshold,
        model_version=result.model_version,
        stored=result.stored,
    )


@router.post(
    "/explain",
    response_model=ExplanationOut,
    summary="TreeSHAP contributions for one transaction (nothing is stored: a read token will do)",
    responses={**_AUTH_RESPONSES, 503: {"model": Problem}},
    openapi_extra=READS,
)
async def explain(body: TransactionIn, ensemble: Champion) -> ExplanationOut:
    """Nothing is stored. Contributions are in log-odds, largest |contribution| first."""
    values = check_body(body)
    rows, explanation = contributions(ensemble, np.array([values], dtype=np.float64))
    score = float(explanation.score[0])
    return ExplanationOut(
        score=score,
        alert=score >= ensemble.threshold,
        threshold=ensemble.threshold,
        model_version=ensemble.version,
        base_value=explanation.base_value,
        contributions=rows[0],
        inputs=dict(zip(EVENT_FEATURES, values, strict=True)),
    )


@router.post(
    "/transactions",
    response_model=Published,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Publish one transaction to Kafka for the scorer",
    responses={**_AUTH_RESPONSES, 503: {"model": Problem, "description": "broker not reachable"}},
)
async def publish(
    body: TransactionIn, publisher: PublisherDep, settings: AppSettings, metrics: Metrics
) -> Published:
    """Built with the producer's event builder and keyed by `id` (generated when absent)."""
    values = check_body(body)
    event_id = body.id or uuid.uuid4().hex
    event = build_event(values, event_id=event_id, label=body.label, run_id=body.run_id)
    try:
        await publisher.publish(settings.topic_transactions, event_id.encode(), encode_event(event))
    except (KafkaError, ConnectionError, OSError, TimeoutError) as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"cannot publish to Kafka: {type(exc).__name__}: {exc}"[:300],
            headers={"Retry-After": "5"},
        ) from None
    metrics.published.inc()
    return Published(id=event_id, topic=settings.topic_transactions, run_id=body.run_id)
