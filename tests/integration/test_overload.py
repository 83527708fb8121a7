"""Beyond capacity the client gets a fast 503 with Retry-After, never a hang,
and the requests that were admitted succeed."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from ray import serve

from harness.cluster import wait_app_running
from tests.integration.conftest import deploy_config, with_test_app

APP = "overload"


@pytest.fixture(scope="module")
def overload_url(base_url: str, tmp_path_factory) -> Iterator[str]:
    """An app whose model admits 1 request and queues 1."""
    config = with_test_app(APP, deployment={"num_replicas": 1, "max_ongoing_requests": 1,
                                            "max_queued_requests": 1})
    deploy_config(config, tmp_path_factory.mktemp("overload"))
    wait_app_running(APP, 180)
    yield f"{base_url}/{APP}"
    serve.delete(APP, _blocking=False)  # (goes while the next module starts)


def test_a_flood_is_shed_fast_and_admitted_requests_succeed(overload_url: str):
    batch = np.random.default_rng(0).random((256, 28, 28, 1), dtype=np.float32)
    header = (b'{"inputs":[{"name":"image","datatype":"FP32","shape":[256,28,28,1],'
              b'"parameters":{"binary_data_size":%d}}]}' % batch.nbytes)
    body = header + batch.tobytes()
    headers = {"Inference-Header-Content-Length": str(len(header))}

    def send(client: httpx.Client) -> tuple[int, float, httpx.Headers, bytes]:
        started = time.perf_counter()
        r = client.post(f"{overload_url}/v2/models/digits/infer", content=body,
                        headers=headers)
        return r.status_code, time.perf_counter() - started, r.headers, r.content

    with (httpx.Client(timeout=30, limits=httpx.Limits(max_connections=64)) as client,
          concurrent.futures.ThreadPoolExecutor(48) as pool):
        results = list(pool.map(lambda _: send(client), range(144)))

    statuses = [status for status, *_ in results]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) > 0 and statuses.count(503) > 0
    shed = [(seconds, answer_headers, content)
            for status, seconds, answer_headers, content in results if status == 503]
    for _, answer_headers, content in shed:
        assert answer_headers["retry-after"] == "1"
        assert b"overloaded" in content
    assert np.median([seconds for seconds, *_ in shed]) < 1.0  # shed at once, not queued
    # Nothing is stuck: the app answers normally right after the flood.
    ok = httpx.post(f"{overload_url}/v2/models/digits/infer", content=body, headers=headers,
                    timeout=30)
    assert ok.status_code == 200
