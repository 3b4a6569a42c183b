"""Schema-driven fuzzing: schemathesis generates requests from the OpenAPI spec; no 5xx allowed.

Runs against the real app under uvicorn, over the database filled through the scorer's
write path, with a bounded number of examples per operation so it stays quick.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.api_fixtures import StoredSample, api_db_fixture, api_settings, serve  # noqa: F401

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def fuzz_server(infra, api_db: StoredSample, model_bundle, tmp_path_factory) -> str:
    settings_ = api_settings(infra, api_db.database_url, model_bundle, tmp_path_factory.mktemp("fuzz"))
    with serve(settings_) as base_url:
        yield base_url


EXAMPLES_PER_OPERATION = 25


def test_no_server_errors(fuzz_server: str) -> None:
    """Every operation of /openapi.json, fuzzed with generated valid and invalid inputs."""
    schema = schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")
    server_errors: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case) -> None:
            response = case.call(base_url=fuzz_server, timeout=30)
            if response.status_code >= 500:
                server_errors.append(
                    f"{case.method} {case.formatted_path} {case.query} -> {response.status_code}: "
                    f"{response.text[:200]}"
                )

        run()
    assert operations >= 18
    assert not server_errors, "\n".join(server_errors[:10])


def test_fuzzed_writes_left_the_database_usable(fuzz_server: str) -> None:
    with httpx.Client(base_url=fuzz_server, timeout=30) as client:
        assert client.get("/health").status_code == 200
