"""What a REST ``:classify``/``:regress`` body may make the ingress build:
the context copied into every example is charged to the memory budget
before any copy is made, and every feature value counts against
``max_elements``."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from deployments.config import AppArgs
from tests.app.conftest import build_app
from tests.common import signature_models

BUDGET = 32 * 2**20


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    model = {"name": "examples", "path": str(signature_models() / "examples")}
    args = AppArgs.model_validate({"models": [model], "limits": {
        "max_inflight_bytes": BUDGET, "max_elements": 10_000}})
    with TestClient(build_app(args), raise_server_exceptions=False) as c:
        yield c


EXAMPLE = {"x": [1.0, 2.0]}


def test_a_context_copied_into_every_example_is_refused_before_it_is_copied(
        client: TestClient):
    # 256 examples of a 200 KB context: ~200 KB of JSON, 51 MB of examples.
    body = {"examples": [EXAMPLE] * 256, "context": {"pad": "x" * 200_000}}
    tracemalloc.start()
    try:
        r = client.post("/v1/models/examples:classify", json=body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 413, r.text[:200]  # more than the whole budget: never fits
    assert "the serialized examples" in r.json()["error"]
    assert f"all requests at once ({BUDGET} bytes)" in r.json()["error"]
    assert peak < 16 * 2**20, f"{peak} bytes allocated for a refused request"
    # Nothing was held after it: the same examples with a small context fit.
    small = client.post("/v1/models/examples:classify",
                        json={**body, "context": {"pad": "x" * 1_000}})
    assert small.status_code == 200, small.text[:200]
    assert len(small.json()["results"]) == 256


def test_every_feature_value_counts_against_max_elements(client: TestClient):
    # The context's 40 values are in each of the 256 examples: 10752 values.
    body = {"signature_name": "regress", "examples": [EXAMPLE] * 256,
            "context": {"pad": list(range(40))}}
    r = client.post("/v1/models/examples:regress", json=body)
    assert r.status_code == 413, r.text[:200]
    assert r.json()["error"] == ("the examples have 10752 feature values (the context's "
                                 "counted in each example), the limit is 10000")
