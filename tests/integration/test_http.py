"""The app behind Serve's proxy, end to end: health, readiness and answers over
real HTTP (the HTTP layer's every route and error is tested in process, in
tests/app)."""

from __future__ import annotations

import httpx

from harness.cluster import running_replicas
from tests.app.test_bad_requests import OVER_THE_WIRE, check
from tests.common import APP_NAME, MEDIA_TYPES, SAMPLES, sample_label, top_label


def test_health_and_readiness(client: httpx.Client):
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json() == {"status": "ready",
                                            "models": ["digits", "digits_linear"]}


def test_every_sample_is_read_through_the_proxy(client: httpx.Client):
    files = [("f", (p.name, p.read_bytes(), MEDIA_TYPES[p.suffix])) for p in SAMPLES]
    r = client.post("/predict", files=files)
    assert r.status_code == 200, r.text
    labels = [top_label(p) for p in r.json()["predictions"]]
    assert sum(a == sample_label(p) for a, p in zip(labels, SAMPLES, strict=True)) >= 9


def test_bad_requests_through_the_proxy_lose_no_replica(client: httpx.Client):
    """Every 10th case of the bad-request corpus, end to end."""
    replicas = running_replicas(APP_NAME)
    failures = [problem for bad in OVER_THE_WIRE[::10] if (problem := check(
        bad, client.request(bad.method, bad.path, content=bad.content, headers=bad.headers)))]
    assert not failures, "\n".join(failures)
    assert running_replicas(APP_NAME) == replicas
    test_every_sample_is_read_through_the_proxy(client)
