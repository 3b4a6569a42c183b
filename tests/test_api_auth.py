"""Reads that need a key: every operation of the OpenAPI spec walked with no token, the read
token, the write token and named tokens, against the real app under uvicorn.

The walk takes its operations from `/openapi.json` itself, so a route added tomorrow is
walked too: if it forgot its check, this test fails. What each operation needs is the
rule stated independently here (GET reads; POST/PUT write, except the listed read-only
POSTs), not read back from the implementation.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from core.bundle_store import BundleStore
from core.features import EVENT_FEATURES
from tests.api_fixtures import StoredSample, api_db_fixture, api_settings, serve  # noqa: F401
from tests.bundles import register, write_variant

pytestmark = pytest.mark.timeout(300)

WRITE, READ = "write-token-0123456789", "read-token-0123456789"
ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789"
#: POSTs that store and change nothing, so a read token may call them.
READ_ONLY_POSTS = {("POST", "/api/explain")}
#: Everything outside /api that the spec lists, all open (metrics: by setting).
OPEN_PATHS = {"/", "/health"}


@pytest.fixture(scope="module")
def guarded(infra, api_db: StoredSample, model_bundle, tmp_path_factory) -> str:
    settings = api_settings(
        infra,
        api_db.database_url,
        model_bundle,
        tmp_path_factory.mktemp("auth"),
        api_token=WRITE,
        api_read_token=READ,
        api_tokens={"alice": {"token": ALICE, "access": "write"}, "bob": {"token": BOB, "access": "read"}},
        api_metrics_public=False,
    )
    with serve(settings) as base_url:
        yield base_url


def _transaction(sample: StoredSample, **extra) -> dict:
    return {**dict(zip(EVENT_FEATURES, sample.raw[0].tolist(), strict=True)), "run_id": "auth-walk", **extra}


def _request_for(method: str, path: str, sample: StoredSample) -> dict:
    """A well-formed request for the operation (path parameters filled, a valid body)."""
    filled = (
        path.replace("{name}", "V14")
        .replace("{run_id}", "bt-none")
        .replace("{version}", sample.ensemble.version)
    )
    request: dict = {"method": method, "url": filled}
    if path == "/api/models/shadow":
        request["json"] = {"version": None}
    elif method in ("POST", "PUT"):
        request["json"] = _transaction(sample)
    return request


def _operations(client: httpx.Client) -> list[tuple[str, str, dict]]:
    spec = client.get("/openapi.json").json()
    return [(method.upper(), path, op) for path, ops in spec["paths"].items() for method, op in ops.items()]


def test_every_operation_in_the_spec_checks_its_token(guarded: str, api_db: StoredSample) -> None:
    with httpx.Client(base_url=guarded, timeout=30) as client:
        operations = _operations(client)
        api_operations = [(m, p) for m, p, _ in operations if p.startswith("/api/")]
        assert len(api_operations) >= 18
        assert {p for _, p, _ in operations if not p.startswith("/api/")} == OPEN_PATHS | {"/metrics"}
        for method, path, operation in operations:
            request = _request_for(method, path, api_db)
            anonymous = client.request(**request)
            if path in OPEN_PATHS:
                assert anonymous.status_code in (200, 503), (method, path, anonymous.status_code)
                continue
            # The spec says so too: a bearer token is part of every guarded operation.
            assert operation.get("security") == [{"HTTPBearer": []}], (method, path)
            assert anonymous.status_code == 401, (method, path, anonymous.status_code, anonymous.text)
            assert anonymous.headers["www-authenticate"] == "Bearer"
            for bad in ("Bearer nope", f"Basic {WRITE}", f"Bearer {WRITE}x", "Bearer", WRITE):
                refused = client.request(**request, headers={"Authorization": bad})
                assert refused.status_code == 401, (method, path, bad, refused.status_code)

            needs_write = method not in ("GET", "HEAD") and (method, path) not in READ_ONLY_POSTS
            for token in (READ, BOB):
                as_reader = client.request(**request, headers={"Authorization": f"Bearer {token}"})
                if needs_write:
                    assert as_reader.status_code == 403, (method, path, as_reader.status_code)
                    assert "read access only" in as_reader.json()["detail"]
                else:
                    assert as_reader.status_code < 500 and as_reader.status_code not in (401, 403), (
                        method,
                        path,
                        as_reader.status_code,
                        as_reader.text,
                    )
            for token in (WRITE, ALICE):
                as_writer = client.request(**request, headers={"Authorization": f"Bearer {token}"})
                assert as_writer.status_code < 500 and as_writer.status_code not in (401, 403), (
                    method,
                    path,
                    as_writer.status_code,
                    as_writer.text,
                )


def test_requests_carry_who_made_them(guarded: str, api_db: StoredSample, model_bundle, tmp_path) -> None:
    original = api_db.ensemble.version
    variant = write_variant(model_bundle, tmp_path / "variant", 0.77)
    asyncio.run(
        register(api_db.database_url, tmp_path / "variant", BundleStore(tmp_path / "store"), activate=False)
    )
    with httpx.Client(base_url=guarded, timeout=30) as client:
        for token, version, name in ((ALICE, variant, "alice"), (WRITE, original, "admin")):
            change = client.post(
                f"/api/models/{version[:8]}/promote", headers={"Authorization": f"Bearer {token}"}
            )
            assert change.status_code == 200, change.text
            assert change.json() | {"at": None} == {
                "version": version,
                "role": "champion",
                "changed": True,
                "actor": name,
                "champion": version,
                "shadow": None,
                "serving": version,  # this process followed at once
                "at": None,
            }
        events = client.get("/api/models/events", headers={"Authorization": f"Bearer {BOB}"}).json()["events"]
        assert [(e["version"], e["action"], e["actor"]) for e in events[:3]] == [
            (original, "promoted", "admin"),
            (variant, "promoted", "alice"),
            (variant, "registered", "tests"),
        ]


def test_metrics_follow_their_setting(
    guarded: str, infra, api_db: StoredSample, model_bundle, tmp_path
) -> None:
    with httpx.Client(base_url=guarded, timeout=30) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {BOB}"}).status_code == 200
        assert client.get("/docs").status_code == 200 and client.get("/openapi.json").status_code == 200
    public = api_settings(infra, api_db.database_url, model_bundle, tmp_path, api_token=WRITE)
    with serve(public) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        assert client.get("/metrics").status_code == 200  # the default: open to scrapers
        assert client.get("/api/stats").status_code == 401


def test_without_tokens_the_api_is_open_to_loopback_callers(http_open: str, api_db: StoredSample) -> None:
    with httpx.Client(base_url=http_open, timeout=30) as client:
        assert client.get("/api/stats").status_code == 200
        promoted = client.post(f"/api/models/{api_db.ensemble.version}/promote")
        assert promoted.status_code == 200 and promoted.json()["actor"] == "anonymous"


@pytest.fixture(scope="module")
def http_open(infra, api_db: StoredSample, model_bundle, tmp_path_factory) -> str:
    settings = api_settings(infra, api_db.database_url, model_bundle, tmp_path_factory.mktemp("open"))
    with serve(settings) as base_url:
        yield base_url
