"""One settings object for every process, read from environment variables (and `.env`).

Every variable is prefixed `FRAUDSTREAM_` (`DATABASE_URL` is also accepted, as most
platforms set it). Leaving the broker or the database unset means "use the embedded
one": the supervisor starts it and hands its address to the services it launches.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class NamedToken(BaseModel):
    """One named API token (`FRAUDSTREAM_API_TOKENS`): who holds it and what it may do."""

    token: str = Field(min_length=16)
    #: read: GETs and explain; review: that, and verdicts on alerts (the analysts' role);
    #: write: everything (predict, publish, the registry, reviews on someone's behalf).
    access: Literal["read", "review", "write"] = "read"


class Settings(BaseSettings):
    """Settings shared by the producer, scorer, API, dashboard and the command."""

    model_config = SettingsConfigDict(
        env_prefix="FRAUDSTREAM_", env_file=".env", extra="ignore", populate_by_name=True
    )

    kafka_bootstrap_servers: str | None = Field(
        default=None, description="host:port[,host:port]; unset = embedded Tansu broker"
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("FRAUDSTREAM_DATABASE_URL", "DATABASE_URL", "database_url"),
        description="postgresql://... ; unset = embedded PostgreSQL",
    )
    topic_transactions: str = "transactions"
    topic_alerts: str = "alerts"
    topic_dead_letters: str = "transactions-dlq"
    topic_partitions: int = Field(default=4, ge=1, le=256)

    model_path: Path = Field(default=PROJECT_ROOT / "models" / "default")
    data_path: Path | None = Field(default=None, description="CSV to replay; unset = shipped sample")
    state_dir: Path = Field(default=PROJECT_ROOT / ".fraudstream")

    host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    dashboard_port: int = Field(default=8050, ge=1, le=65535)
    scorer_web_port: int = Field(default=6066, ge=1, le=65535)
    broker_port: int = Field(default=0, ge=0, le=65535, description="embedded broker; 0 = a free port")
    postgres_port: int = Field(default=0, ge=0, le=65535, description="embedded PostgreSQL; 0 = a free port")

    api_url: str | None = Field(default=None, description="where the dashboard finds the API")
    api_token: str | None = Field(default=None, description="bearer token required by write endpoints")
    cors_origins: list[str] = Field(default_factory=list)

    api_cache_seconds: float = Field(
        default=2.0, ge=0, le=300, description="max age of cached stats/list answers; 0 = no cache"
    )
    api_analytics_cache_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="max age of full-scan answers (histograms, scatter, performance)",
    )

    #: Most events per scorer batch; a backlog is gathered into batches of this size.
    scorer_batch_size: int = Field(default=4000, ge=1, le=100_000)
    #: Longest a partial batch of verdicts (the labels agent) waits (s). Transactions never
    #: wait to fill a batch: their batch is what has already arrived (`scorer.batches`).
    scorer_batch_timeout: float = Field(default=0.02, gt=0, le=10)

    # --- scorer: health and fault injection (issue 11) ---
    #: A worker with work waiting (events consumed and not acknowledged, or lag) and no batch
    #: done for this long reports itself stalled (metrics, /health, its scorer_workers row).
    scorer_stall_seconds: float = Field(default=30.0, gt=0, le=3600)
    #: Tests only: `exit-after-store:N` ends the worker right after its Nth committed write,
    #: before it publishes or acknowledges (scorer/faults.py); `exit-after-label-store:N` the
    #: same for the labels agent's writes. Unset in any real deployment.
    scorer_fault: str | None = Field(default=None, pattern=r"^exit-after-(label-)?store:[1-9][0-9]*$")

    log_level: str = "INFO"

    # The supervisor (`fraudstream up` / `infra`) and the replay's stop: how a stack heals and stops.
    #: A service restarted this many times within `supervisor_crash_loop_seconds` is in a crash
    #: loop: the stack stops and says why (restarts back off 0.5 s doubling to 30 s before that).
    supervisor_crash_loop_restarts: int = Field(default=5, ge=1, le=1000)
    supervisor_crash_loop_seconds: float = Field(default=120.0, gt=0, le=86_400)
    #: A service whose health stays bad this long (the scorer stalled, a web port not
    #: answering) is killed and restarted.
    supervisor_unhealthy_seconds: float = Field(default=60.0, gt=0, le=3600)
    #: Grace between SIGTERM and SIGKILL for each child when stopping.
    supervisor_stop_seconds: float = Field(default=10.0, gt=0, le=600)
    #: After a stop (Ctrl-C / SIGTERM), how long the replay waits for the broker to confirm
    #: what it sent before giving up and exiting non-zero.
    replay_flush_seconds: float = Field(default=10.0, gt=0, le=600)

    # --- model registry, API safety and health (issue 12) ------------------------------------
    #: The content-addressed bundle store (`core.bundle_store`): one directory per registered
    #: version. Scorers and the API load registered models from here, so it must be shared
    #: by all of them (a shared volume across machines). Unset = <state_dir>/models.
    model_store: Path | None = Field(default=None, description="registered bundles, one folder per version")
    #: How often the scorer and the API ask the registry which version is the champion.
    model_refresh_seconds: float = Field(default=5.0, gt=0, le=300)
    #: How often the API recounts the champion's last complete hour of data for the drift gauges.
    drift_refresh_seconds: float = Field(default=60.0, gt=0, le=3600)
    #: Reads only: `/api/*` GETs (and explain) with this token; writes get 403.
    api_read_token: str | None = Field(default=None, description="bearer token for reads only")
    #: Named tokens, so requests carry who made them: {"alice": {"token": "...", "access": "write"}}.
    api_tokens: dict[str, NamedToken] = Field(default_factory=dict)
    #: Whether `/metrics` stays open when tokens are configured (Prometheus scrapers usually
    #: carry none; the page holds counters, no transaction data). False: it needs a read token.
    api_metrics_public: bool = True
    #: Largest request body the API reads (a transaction is ~1 KB); larger gets 413.
    api_max_body_bytes: int = Field(default=65_536, ge=1024, le=16 * 1024 * 1024)
    #: Predictions in progress (waiting or being scored) at most; past that `/api/predict`
    #: answers 503 with Retry-After instead of letting the queue (and every caller's wait) grow.
    api_predict_queue: int = Field(default=256, ge=1, le=100_000)
    #: PostgreSQL cancels any API statement running longer than this (both connection pools).
    api_statement_timeout_ms: int = Field(default=15_000, ge=100, le=3_600_000)
    #: How long a request waits for a free database connection before it gets 503.
    api_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    #: A scorer worker whose heartbeat is older than this is gone (`/health`).
    health_worker_stale_seconds: float = Field(default=15.0, gt=0, le=3600)

    # --- the analyst loop: labels, reviews, the threshold set by cost (issue 13) -------------
    #: The topic of verdicts (analyst reviews, chargebacks, replayed labels; `core.labels`),
    #: keyed by transaction id, with as many partitions as the transactions topic.
    topic_labels: str = "labels"
    #: What reviewing one alert costs (in the currency of the amounts). The value of catching
    #: a fraud is its amount, so net savings = fraud amount caught - alerts x this. Unset: no
    #: savings are computed (backtests, the savings curve, `fraudstream threshold` ask for it).
    cost_per_alert: float | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)
    #: Alerts the analysts can review per day (optional): `fraudstream threshold` picks the best
    #: threshold within it, and backtests report the precision of the top capacity x days alerts.
    analyst_capacity: int | None = Field(default=None, ge=1, le=100_000_000)

    # --- scale with time: partitions by data day and retention (issue 15) --------------------
    #: Data days of the live run's row-level data kept (transactions, scores, shadow scores),
    #: counted back from the newest data day; older days are dropped whole (a partition drop)
    #: by the maintenance task. Unset or 0: keep everything. Backtest runs and the rollups
    #: are never dropped by it.
    retention_days: int | None = Field(default=None, ge=0, le=100_000)
    #: How often the scorer's maintenance task makes a pass (next days' partitions, rows
    #: out of the default partition, retention); one worker acts at a time.
    maintenance_seconds: float = Field(default=60.0, gt=0, le=86_400)
    #: How often the scorer workers, between them, fold the scores stored since the last fold
    #: into the wide rollups (histograms, in-sample score hours, drift; migrations 0014-0015).
    #: The API folds before it reads them too, so this bounds only how much a read's fold does.
    rollup_fold_seconds: float = Field(default=1.0, gt=0, le=3600)

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql", "postgres://")):
            raise ValueError("database_url must be a postgresql:// URL")
        return value

    @property
    def resolved_api_url(self) -> str:
        return self.api_url or f"http://{self.host}:{self.api_port}"

    @property
    def resolved_model_store(self) -> Path:
        """Where registered bundles live: FRAUDSTREAM_MODEL_STORE, or <state_dir>/models."""
        return self.model_store or self.state_dir / "models"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once (FastAPI's `Depends(get_settings)` convention)."""
    return Settings()


def settings_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The settings as FRAUDSTREAM_* variables, to hand them to a child process unchanged."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        env[f"FRAUDSTREAM_{name.upper()}"] = (
            json.dumps(value) if isinstance(value, list | dict) else str(value)
        )
    env.update(overrides)
    return env
