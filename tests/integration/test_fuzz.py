"""Property-based fuzzing of every HTTP route from the served OpenAPI document
(schemathesis): no 5xx on anything it generates, no replica lost, and good
requests still answered correctly afterwards."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from deployments.local import running_replicas
from tests.integration.conftest import APP_NAME, SAMPLES, sample_label


@pytest.fixture(scope="session")
def api_schema(base_url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


@pytest.fixture(scope="module")
def replicas_before(base_url: str) -> dict[str, int]:
    return running_replicas(APP_NAME)


def test_no_generated_request_gets_a_server_error(api_schema, base_url: str, replicas_before):
    # Each operation in turn (schemathesis' pytest plugin predates pytest 9).
    statuses: list[int] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call_and_validate(base_url=base_url, checks=[not_a_server_error])
            statuses.append(response.status_code)

        fuzz()
    assert len(operations) >= 21
    assert len(statuses) >= 300 and max(statuses) < 500
    assert 200 in statuses and any(400 <= s < 500 for s in statuses)


def test_the_app_is_whole_after_fuzzing(client: httpx.Client, replicas_before):
    assert running_replicas(APP_NAME) == replicas_before
    sample = SAMPLES[5]
    r = client.post("/predict", content=sample.read_bytes(),
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200
    assert r.json()["predictions"][0]["top_k"][0]["label"] == sample_label(sample)
