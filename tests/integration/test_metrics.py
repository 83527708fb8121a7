"""The app's own metrics, scraped from Ray's Prometheus endpoint the way a
Prometheus server would, after real requests over each protocol."""

from __future__ import annotations

import time
import urllib.request

import httpx
import numpy as np
import pytest
import ray
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from tests.common import APP_NAME, SAMPLES

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape() -> Samples:
    """Every sample of every node's metrics endpoint, by sample name."""
    found: Samples = {}
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over the series whose labels include ``labels``."""
    return sum(value for tags, value in samples.get(name, [])
               if tags.get("application") == APP_NAME
               and all(tags.get(k) == v for k, v in labels.items()))


@pytest.fixture(scope="module")
def traffic(client: httpx.Client, grpc_address: str) -> None:
    """Requests over each protocol, some of them refused."""
    image = SAMPLES[0].read_bytes()
    for _ in range(3):
        assert client.post("/predict", content=image,
                           headers={"content-type": "image/png"}).status_code == 200
    assert client.post("/models/nope/predict", content=image,
                       headers={"content-type": "image/png"}).status_code == 404
    assert client.post("/v1/models/digits_linear:predict",
                       json={"instances": [[0.0] * 3]}).status_code == 400
    rows = np.zeros((2, 64), dtype=np.float32)
    infer = grpcclient.InferInput("pixels", list(rows.shape), "FP32")
    infer.set_data_from_numpy(rows)
    grpcclient.InferenceServerClient(grpc_address).infer(
        "digits_linear", [infer], headers={"application": APP_NAME})
    handle = serve.get_app_handle(APP_NAME)
    handle.predict.remote(rows, model="digits_linear").result(timeout_s=60)


Expected = list[tuple[str, dict[str, str], float]]


def scrape_until(expected: Expected, timeout_s: float = 60) -> Samples:
    """Ray exports metrics every few seconds: scrape until each sample sums to
    at least its minimum, or fail naming those that never did."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape()
        short = [(name, labels, total(samples, name, **labels))
                 for name, labels, least in expected if total(samples, name, **labels) < least]
        if not short:
            return samples
        assert time.monotonic() < deadline, f"metrics short of expected: {short}"
        time.sleep(2)


def test_requests_are_counted_by_model_protocol_and_status(traffic):
    count = "ray_tfserve_requests_total"
    samples = scrape_until([
        (count, {"model": "digits", "protocol": "native", "status": "200"}, 3),
        # A name that is not served is one bounded label value, not a new series.
        (count, {"model": "unknown", "protocol": "native", "status": "404"}, 1),
        (count, {"model": "digits_linear", "protocol": "tfserving", "status": "400"}, 1),
        (count, {"model": "digits_linear", "protocol": "v2-grpc", "status": "OK"}, 1),
        (count, {"model": "digits_linear", "protocol": "handle", "status": "200"}, 1),
    ])
    assert total(samples, count, model="nope") == 0


def test_latency_batch_and_queue_metrics_are_exported(traffic):
    samples = scrape_until([
        *((name, {"model": model}, least)
          for name in ("ray_tfserve_preprocess_seconds_count",
                       "ray_tfserve_inference_seconds_count")
          for model, least in (("digits", 3), ("digits_linear", 2))),
        # The gRPC and the handle request, 2 rows each. (Ray estimates a
        # histogram's sum from bucket midpoints: the buckets are what is exact.)
        ("ray_tfserve_batch_rows_bucket", {"model": "digits_linear", "version": "1",
                                           "le": "2.0"}, 2),
        ("ray_tfserve_batch_seconds_count", {"model": "digits", "version": "1"}, 1),
    ])
    queues = [tags for tags, _ in samples.get("ray_tfserve_queue_length", [])
              if tags.get("application") == APP_NAME]
    assert {(t["model"], t["version"]) for t in queues} >= {("digits", "1"),
                                                            ("digits_linear", "1")}
