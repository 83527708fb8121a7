"""The app's own metrics, scraped from Ray's Prometheus endpoint the way a
Prometheus server would, after real requests over each protocol."""

from __future__ import annotations

import base64
import time
import urllib.request
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import ray
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from harness.cluster import wait_app_running, wait_until
from tests.common import APP_NAME, SAMPLES
from tests.integration.conftest import deploy_config, with_test_app

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
    def queues(samples: Samples) -> set[tuple[str, str]]:
        return {(t["model"], t["version"]) for t, _ in samples.get("ray_tfserve_queue_length", [])
                if t.get("application") == APP_NAME}

    # Each replica reports its gauge on a timer of its own: await both.
    both = {("digits", "1"), ("digits_linear", "1")}
    if not queues(samples) >= both:
        wait_until(lambda: queues(scrape()) >= both, 60, f"the queue gauges of {both}")


MONITORED = "monitored"
PAGE = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="module")
def monitored_url(base_url: str, tmp_path_factory) -> Iterator[str]:
    """An app with TF Serving's monitoring page on and two model replicas."""
    config = with_test_app(MONITORED, args={"monitoring": {"prometheus": {"enable": True}}},
                           deployment={"num_replicas": 2})
    deploy_config(config, tmp_path_factory.mktemp(MONITORED))
    wait_app_running(MONITORED, 180)
    yield f"{base_url}/{MONITORED}"
    serve.delete(MONITORED, _blocking=False)  # (goes while the next module starts)


def read_page(client: httpx.Client) -> Samples:
    """The monitoring page's samples by name (the parser names counters' ``_total``)."""
    answer = client.get(PAGE)
    assert answer.status_code == 200
    found: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return sum(v for tags, v in found.get(name, []) if tags == labels)


COUNT = ":tensorflow:serving:request_count_total"
LATENCY = ":tensorflow:serving:request_latency_count"
RUNS = ":tensorflow:serving:batching_session:wrapped_run_count_total"


def test_the_monitoring_page_holds_tf_servings_metrics_of_every_replica(monitored_url):
    image = SAMPLES[0].read_bytes()
    instance = {"b64": base64.b64encode(image).decode()}
    with httpx.Client(base_url=monitored_url, timeout=60) as client:
        for _ in range(4):
            assert client.post("/v1/models/digits:predict",
                               json={"instances": [instance]}).status_code == 200
        for _ in range(2):
            assert client.post("/predict", content=image,
                               headers={"content-type": "image/png"}).status_code == 200
        assert client.post("/v1/models/digits:predict",
                           json={"instances": [[0.0] * 3]}).status_code == 400
        deadline = time.monotonic() + 60
        while True:  # Ray exports every few seconds, each process on its own beat
            found = read_page(client)
            if (value(found, COUNT, model_name="digits", status="OK") >= 6
                    and value(found, LATENCY, model_name="digits", API="native",
                              entrypoint="REST") >= 2
                    and value(found, COUNT, model_name="digits", status="INVALID_ARGUMENT")
                    and value(found, RUNS)):  # the model replica's, not the ingress's
                break
            assert time.monotonic() < deadline, sorted(found)
            time.sleep(2)
    assert value(found, COUNT, model_name="digits", status="OK") == 6
    assert value(found, COUNT, model_name="digits", status="INVALID_ARGUMENT") == 1
    assert value(found, LATENCY, model_name="digits", API="tfserving", entrypoint="REST") == 4
    assert value(found, LATENCY, model_name="digits", API="native", entrypoint="REST") == 2
    runs = value(found, RUNS)
    assert 1 <= runs <= 6
    assert value(found, ":tensorflow:serving:runtime_latency_count", model_name="digits",
                 API="", runtime="TF1") == runs
    # Ours beside them, of this app only.
    assert {t["application"] for t, _ in found["ray_tfserve_requests_total"]} == {MONITORED}
    assert "ray_tfserve_batch_seconds_count" in found
