"""Backtest runs as the backtest runner records them (read-only here)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status

from api import queries
from api.deps import Connection
from api.params import NO_NUL
from api.schemas import BacktestList, BacktestRun, Problem
from core.events import MAX_RUN_ID_LENGTH

router = APIRouter(prefix="/api/backtests", tags=["backtests"])


def _run(row, scored: int | None = None) -> BacktestRun:
    return BacktestRun(**{key: value for key, value in row._mapping.items()}, scored=scored)


@router.get("", response_model=BacktestList, summary="Backtest runs, newest first")
async def list_runs(conn: Connection) -> BacktestList:
    rows = (await conn.execute(queries.backtest_list())).all()
    return BacktestList(runs=[_run(row) for row in rows])


@router.get(
    "/{run_id}",
    response_model=BacktestRun,
    summary="One backtest run, with how many of its rows are stored",
    responses={404: {"model": Problem}},
)
async def get_run(
    conn: Connection, run_id: Annotated[str, Path(min_length=1, max_length=MAX_RUN_ID_LENGTH, pattern=NO_NUL)]
) -> BacktestRun:
    row = (await conn.execute(queries.backtest_one(run_id))).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no backtest run {run_id!r}")
    scored = (await conn.execute(queries.run_counter(run_id, "scored"))).scalar_one()
    return _run(row, scored)
