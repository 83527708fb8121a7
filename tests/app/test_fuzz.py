"""Property-based fuzzing of every HTTP operation in the served OpenAPI document
(schemathesis, in process): no 5xx on anything it generates, one test case per
operation, and good requests still answered correctly afterwards."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import get_client
from starlette.applications import Starlette

from deployments.asgi import api_routes
from deployments.config import InputLimits
from deployments.openapi import openapi_document
from tests.app.conftest import build_app, config_args
from tests.common import SAMPLES, sample_label, top_label

STATUSES: list[int] = []  # every operation's, for the test at the end

OPERATIONS = [(method.upper(), path)
              for path, item in openapi_document(api_routes(None, InputLimits(), 3),
                                                 ["digits", "digits_linear"])["paths"].items()
              for method in item]


@pytest.fixture(scope="module")
def app() -> Starlette:
    """Its own app: schemathesis runs requests on an event loop of its own."""
    return build_app(config_args())


@pytest.fixture(scope="module")
def schema(app: Starlette) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_every_operation_is_fuzzed():
    assert len(OPERATIONS) >= 21


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_generated_request_gets_a_server_error(schema, method: str, path: str):
    statuses: list[int] = []

    @given(case=schema[path][method].as_strategy())
    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case) -> None:
        statuses.append(case.call_and_validate(checks=[not_a_server_error]).status_code)

    fuzz()
    assert statuses and max(statuses) < 500
    STATUSES.extend(statuses)


def test_the_app_is_whole_after_fuzzing(app: Starlette, schema):
    # The fuzzing reached the models (200s) and was turned away (4xx), never a 5xx.
    assert 200 in STATUSES and any(400 <= s < 500 for s in STATUSES)
    sample = SAMPLES[5]
    with get_client(app) as client:  # on schemathesis' event loop, like the fuzzing
        r = client.post("/predict", data=sample.read_bytes(),
                        headers={"Content-Type": "image/png"})
    assert r.status_code == 200
    assert top_label(r.json()["predictions"][0]) == sample_label(sample)
