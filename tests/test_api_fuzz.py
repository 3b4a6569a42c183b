"""Schema-driven fuzzing: schemathesis generates requests from the OpenAPI spec; no 5xx allowed.

Runs against the real app under uvicorn, over the database filled through the scorer's
write path, with tokens configured (every request carries the write token, as a client
of a guarded deployment would), in both of schemathesis' modes: valid inputs (positive)
and inputs that break the schema (negative: wrong types, out-of-range values, missing
fields, bad path parameters), a bounded number of examples per operation each.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from tests.api_fixtures import StoredSample, api_db_fixture, api_settings, serve  # noqa: F401

pytestmark = pytest.mark.timeout(900)

TOKEN = "fuzz-write-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES_PER_OPERATION = 20


@pytest.fixture(scope="module")
def fuzz_server(infra, api_db: StoredSample, model_bundle, tmp_path_factory) -> str:
    settings_ = api_settings(
        infra,
        api_db.database_url,
        model_bundle,
        tmp_path_factory.mktemp("fuzz"),
        api_token=TOKEN,
        api_read_token="fuzz-read-token-0123456789",
    )
    with serve(settings_) as base_url:
        yield base_url


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(fuzz_server: str, mode: GenerationMode) -> None:
    """Every operation of /openapi.json, fuzzed in this mode, with the write token."""
    schema = schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json", headers=AUTH)
    spec = httpx.get(f"{fuzz_server}/openapi.json").json()
    in_spec = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    server_errors: list[str] = []
    fuzzed: set[tuple[str, str]] = set()
    nothing_to_break: set[tuple[str, str]] = set()
    statuses: set[int] = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        key = (operation.method.upper(), operation.path)

        @given(case=operation.as_strategy(generation_mode=mode, headers=AUTH))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case) -> None:
            response = case.call(base_url=fuzz_server, timeout=30, headers=AUTH)
            statuses.add(response.status_code)
            if response.status_code >= 500:
                server_errors.append(
                    f"{case.method} {case.formatted_path} {case.query} {str(case.body)[:80]} -> "
                    f"{response.status_code}: {response.text[:200]}"
                )

        try:
            run()
            fuzzed.add(key)
        except Unsatisfiable:  # negative mode: an operation without parameters has nothing to break
            nothing_to_break.add(key)
    assert fuzzed | nothing_to_break == in_spec  # every operation of the spec
    assert len(fuzzed) >= (19 if mode is GenerationMode.POSITIVE else 12)
    assert not server_errors, "\n".join(server_errors[:10])
    if mode is GenerationMode.NEGATIVE:
        assert 422 in statuses  # invalid inputs were sent, and refused as such
    assert statuses & {200, 202}


def test_fuzzed_writes_left_the_database_usable(fuzz_server: str) -> None:
    with httpx.Client(base_url=fuzz_server, timeout=30, headers=AUTH) as client:
        assert client.get("/health").json()["database"] == "ok"
        assert client.get("/api/stats").status_code == 200
