"""The dashboard's HTTP client: the only module that knows the API's URLs.

    api = ApiClient("http://127.0.0.1:8000")
    api.stats()            # dict, as the API returns it
    api.alerts(limit=20)

Every read goes through a `TickCache`, so each panel costs the API one request per tick
however many tabs are open. Failures come back as two exceptions the pages turn into
plain messages: `ApiUnreachable` (nothing answers at the URL, or it timed out) and
`ApiError` (the API answered with an error status, with its message).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from dashboard.cache import TickCache

#: How long live panels (stats, alerts, time series, health) share one answer.
LIVE_TTL = 1.0
#: Slower-moving views (distributions, model, backtests) are re-read at most this often.
SLOW_TTL = 10.0


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class ApiUnreachable(Exception):
    """Nothing answered at the API's URL (refused, timed out, DNS)."""


class ApiError(Exception):
    """The API answered with an error status; `detail` is its message."""

    def __init__(self, status: int, detail: str, path: str):
        super().__init__(f"{path}: HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.path = path


def _detail(response: httpx.Response) -> str:
    """FastAPI puts the message under "detail" (a string, or a list of validation errors)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(x) for x in item.get("loc", ()) if x != "body")
                parts.append(f"{where}: {item.get('msg', item)}" if where else str(item.get("msg", item)))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


class ApiClient:
    """Typed-by-name access to the fraudstream API; answers are the API's JSON."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        read_token: str | None = None,
        timeout: float = 5.0,
        live_ttl: float = LIVE_TTL,
        slow_ttl: float = SLOW_TTL,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        # Reads go with the read token when there is one; writes (predict) need the write token.
        self._read_headers = _bearer(read_token or token)
        self._write_headers = _bearer(token)
        self._live_ttl = live_ttl
        self._slow_ttl = slow_ttl
        self._cache = TickCache(ttl=live_ttl)
        # A short connect timeout: an API that is down must not stall every callback.
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
            headers={"Accept": "application/json", "User-Agent": "fraudstream-dashboard"},
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    # -- plumbing ---------------------------------------------------------------------
    def _request(self, method: str, path: str, *, accept: tuple[int, ...] = (), **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise ApiUnreachable(f"the API at {self.base_url} is unreachable ({type(exc).__name__})") from exc
        if response.status_code >= 400 and response.status_code not in accept:
            raise ApiError(response.status_code, _detail(response), path)
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(response.status_code, "the answer is not JSON", path) from exc

    def _get(self, path: str, params: Mapping[str, Any] | None = None, *, ttl: float | None = None) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        key = (path, tuple(sorted(clean.items())))
        return self._cache.get(
            key, lambda: self._request("GET", path, params=clean, headers=self._read_headers), ttl=ttl
        )

    def _post(self, path: str, body: Any, *, writes: bool) -> Any:
        headers = self._write_headers if writes else self._read_headers
        return self._request("POST", path, json=body, headers=headers)

    # -- health and live ----------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """The readiness body; /health answers 503 with the same body when a part is down."""
        return self._cache.get(("/health",), lambda: self._request("GET", "/health", accept=(503,)))

    def stats(self, **params: Any) -> dict[str, Any]:
        return self._get("/api/stats", params)

    def timeseries(self, **params: Any) -> Any:
        return self._get("/api/stats/timeseries", params)

    def alerts(self, limit: int = 20, **params: Any) -> Any:
        return self._get("/api/alerts", {"limit": limit, **params})

    def transactions(self, limit: int = 20, label: int | None = None, **params: Any) -> Any:
        return self._get("/api/transactions", {"limit": limit, "label": label, **params})

    def anomalies(self, limit: int = 20, **params: Any) -> Any:
        return self._get("/api/anomalies", {"limit": limit, **params})

    # -- explore -------------------------------------------------------------------------
    def amount_distribution(self, **params: Any) -> Any:
        return self._get("/api/distributions/amount", params, ttl=self._slow_ttl)

    def feature_distribution(self, name: str, **params: Any) -> Any:
        return self._get(f"/api/distributions/feature/{quote(name, safe='')}", params, ttl=self._slow_ttl)

    def scatter(self, x: str, y: str, n: int = 2000) -> Any:
        return self._get("/api/scatter", {"x": x, "y": y, "n": n}, ttl=self._slow_ttl)

    # -- model -----------------------------------------------------------------------------
    def model_performance(self, **params: Any) -> Any:
        return self._get("/api/model/performance", params, ttl=self._slow_ttl)

    def models(self) -> Any:
        return self._get("/api/models", ttl=self._slow_ttl)

    def compare(self, **params: Any) -> Any:
        """Champion against shadow (`/api/models/compare`); 409 when there is no shadow."""
        return self._get("/api/models/compare", params, ttl=self._slow_ttl)

    def drift(self, **params: Any) -> Any:
        return self._get("/api/drift", params, ttl=self._slow_ttl)

    # -- try it ----------------------------------------------------------------------------
    def predict(self, transaction: Mapping[str, Any]) -> Any:
        return self._post("/api/predict", dict(transaction), writes=True)

    def explain(self, transaction: Mapping[str, Any]) -> Any:
        return self._post("/api/explain", dict(transaction), writes=False)  # stores nothing: a read

    # -- review --------------------------------------------------------------------------
    def review_queue(self, limit: int = 20, order: str = "score") -> Any:
        """Unreviewed live alerts; never cached (a verdict given a moment ago must not show again)."""
        path, params = "/api/review/queue", {"limit": limit, "order": order, "explain": "false"}
        return self._request("GET", path, params=params, headers=self._read_headers)

    def review(
        self, transaction_id: str, verdict: str, *, reviewer: str, note: str | None, review_id: str
    ) -> Any:
        """Record a verdict for `reviewer` (the dashboard's write token acts for its analysts);
        the same `review_id` on a retry records it once."""
        body = {"verdict": verdict, "note": note or None, "review_id": review_id}
        headers = {**self._write_headers, "X-Fraudstream-Reviewer": reviewer}
        path = f"/api/alerts/{quote(transaction_id, safe='')}/review"
        return self._request("POST", path, json=body, headers=headers)

    def feedback_summary(self, hours: float = 24.0) -> Any:
        return self._get("/api/feedback/summary", {"hours": hours})

    def savings(self, **params: Any) -> Any:
        return self._get("/api/model/savings", params, ttl=self._slow_ttl)

    # -- backtests -------------------------------------------------------------------------
    def backtests(self) -> Any:
        return self._get("/api/backtests", ttl=self._live_ttl * 3)

    def backtest(self, run_id: str) -> Any:
        return self._get(f"/api/backtests/{quote(run_id, safe='')}", ttl=self._live_ttl * 3)
