"""Our metrics as TF Serving's monitoring page shows them, from the text a
real Ray metrics agent exported (``data/ray_node_metrics.txt.gz``: series of
the app's shapes from two ingress and three model replicas of application
``default`` and one ingress replica of application ``other``, Ray 2.60)."""

from __future__ import annotations

import gzip
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deployments.ingress.protocols.grpc import STATUS_CODES
from deployments.tfserving_metrics import (
    REQUEST_COUNT,
    REQUEST_LATENCY,
    REQUEST_LATENCY_BUCKETS_S,
    RUNTIME_LATENCY,
    WRAPPED_RUNS,
    entrypoint,
    status_code,
    translate,
)

NODE = gzip.decompress((Path(__file__).parent / "data" / "ray_node_metrics.txt.gz")
                       .read_bytes()).decode()
# The same replicas' figures again, as a second node's page.
OTHER_NODE = NODE.replace('NodeAddress="192.0.2.2"', 'NodeAddress="192.0.2.3"')

Samples = dict[str, list[tuple[dict[str, str], float]]]


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    """One sample's value (the parser names a counter's samples ``_total``)."""
    if name in (REQUEST_COUNT, WRAPPED_RUNS):
        name = f"{name}_total"
    matches = [v for tags, v in found.get(name, []) if tags == labels]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


@pytest.fixture(scope="module")
def page() -> str:
    return translate([NODE, OTHER_NODE], app="default")


def test_request_count_sums_every_replica_and_node_by_model_and_tf_status(page):
    found = samples(page)
    # Each of the 2 replicas counted each request 2 and 3 times, on each of 2 nodes.
    per = (2 + 3) * 2
    assert value(found, REQUEST_COUNT, model_name="digits", status="OK") == 3 * per
    assert value(found, REQUEST_COUNT, model_name="digits", status="CANCELLED") == per  # 499
    assert value(found, REQUEST_COUNT, model_name="digits_linear",
                 status="INVALID_ARGUMENT") == 2 * per  # HTTP 400 and gRPC's code
    assert value(found, REQUEST_COUNT, model_name="digits_linear", status="OK") == per
    assert value(found, REQUEST_COUNT, model_name="unknown", status="NOT_FOUND") == per
    # Requests about no model (health, this page) are not TF Serving's.
    named = {t["model_name"] for t, _ in found[f"{REQUEST_COUNT}_total"]}
    assert named == {"digits", "digits_linear", "unknown"}


def test_only_the_apps_own_series_are_kept(page):
    assert 'application="other"' not in page
    everyone = samples(translate([NODE]))
    assert value(everyone, REQUEST_COUNT, model_name="digits", status="CANCELLED") == 1 + 2 + 3


def test_request_latency_in_microseconds_on_tf_servings_buckets(page):
    found = samples(page)
    bucket = f"{REQUEST_LATENCY}_bucket"
    labels = {"model_name": "digits", "API": "tfserving", "entrypoint": "REST"}
    bounds = [t["le"] for t, _ in found[bucket] if {**t, "le": ""} == {**labels, "le": ""}]
    # Exponential(10, 1.8, 33), written as TF Serving's exporter writes a double.
    assert bounds[:6] == ["10", "18", "32.4", "58.32", "104.976", "188.957"]
    assert len(bounds) == len(REQUEST_LATENCY_BUCKETS_S) + 1 and bounds[-1] == "+Inf"
    # Each replica of each node answered one tfserving request in 700 µs, one in 3.1 ms.
    assert value(found, bucket, **labels, le="612.22") == 0
    assert value(found, bucket, **labels, le="1102") == 4
    assert value(found, bucket, **labels, le="1983.59") == 4
    assert value(found, bucket, **labels, le="3570.47") == 8
    assert value(found, f"{REQUEST_LATENCY}_count", **labels) == 8
    for protocol, entry in (("tfserving-grpc", "GRPC"), ("v2", "REST"), ("handle", "HANDLE")):
        assert value(found, f"{REQUEST_LATENCY}_count", model_name="digits_linear",
                     API=protocol, entrypoint=entry) == 4


def test_runtime_latency_and_wrapped_runs_count_tensorflow_calls(page):
    found = samples(page)
    # 4 + 5 calls on the two digits replicas, 6 on digits_linear's, on each node.
    labels = {"model_name": "digits", "API": "", "runtime": "TF1"}
    assert value(found, f"{RUNTIME_LATENCY}_count", **labels) == 18
    assert value(found, f"{RUNTIME_LATENCY}_bucket", **labels, le="5000") == 2 * 2
    assert value(found, f"{RUNTIME_LATENCY}_bucket", **labels, le="+Inf") == 18
    ours = sum(v for t, v in samples(NODE)["ray_tfserve_batch_seconds_sum"]
               if t["model"] == "digits")
    assert value(found, f"{RUNTIME_LATENCY}_sum", **labels) == pytest.approx(2 * ours * 1e6)
    assert value(found, WRAPPED_RUNS) == 2 * (4 + 5 + 6)


def test_written_as_tf_servings_exporter_writes(page):
    lines = page.splitlines()
    assert f"# TYPE {REQUEST_COUNT} counter" in lines
    assert f'{REQUEST_COUNT}{{model_name="digits",status="OK"}} 30' in lines  # no _total, int
    assert f"{WRAPPED_RUNS}{{}} 30" in lines
    assert f"# TYPE {REQUEST_LATENCY} histogram" in lines
    assert not any(line.startswith("# HELP :tensorflow") for line in lines)
    assert (f'{REQUEST_LATENCY}_bucket{{model_name="digits",API="tfserving",entrypoint="REST",'
            f'le="1e+06"}} 8') not in lines  # a TF bound is 1.8^n, not ours
    assert f'{RUNTIME_LATENCY}_bucket{{model_name="digits",API="",runtime="TF1",le="1e+06"}} 18' \
        in lines


def test_our_own_series_follow_every_replica_as_ray_exported_them(page):
    found, node = samples(page), samples(NODE)
    mine = [t for t, _ in node["ray_tfserve_requests_total"] if t["application"] == "default"]
    kept = found["ray_tfserve_requests_total"]
    assert len(kept) == 2 * len(mine)
    assert {t["replica"] for t, _ in kept} == {"p1", "p2"}
    assert "ray_tfserve_queue_length" in found and "python_gc_collections_total" not in found


def test_no_figures_yet_is_a_page_of_types_alone():
    page = translate([], app="default")
    assert [f.name for f in text_string_to_metric_families(page)] == [
        REQUEST_COUNT, REQUEST_LATENCY, RUNTIME_LATENCY, WRAPPED_RUNS]


def test_statuses_become_the_codes_tf_serving_and_our_grpc_services_answer():
    for http, code in STATUS_CODES.items():
        assert status_code(str(http)) == code.name
    assert status_code("200") == "OK" and status_code("499") == "CANCELLED"
    assert status_code("504") == "DEADLINE_EXCEEDED" and status_code("418") == "UNKNOWN"
    assert status_code(grpc.StatusCode.DEADLINE_EXCEEDED.name) == "DEADLINE_EXCEEDED"
    assert [entrypoint(p) for p in ("native", "v2-grpc", "handle")] == ["REST", "GRPC", "HANDLE"]
