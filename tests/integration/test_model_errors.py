"""A model that cannot load fails its replica with a message naming the path and
the cause, shown in `serve status`; nothing hangs and the main app is unharmed."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest
from ray import serve
from ray.serve.schema import ApplicationStatus

from deployments.app import build_app
from harness.cluster import http_ok, wait_until
from tests.common import ROOT, SAMPLES
from tests.integration.conftest import deploy_config, with_test_app


@pytest.mark.parametrize(
    ("make_path", "cause"),
    [
        (lambda tmp: tmp / "does-not-exist", "no such directory"),
        (lambda tmp: tmp, "no saved_model.pb in it"),
    ],
    ids=["missing", "not-a-savedmodel"],
)
def test_unloadable_model_fails_clearly(
    base_url, client: httpx.Client, tmp_path: Path, make_path, cause
):
    path = make_path(tmp_path)
    app = build_app({"models": [{"name": "broken", "path": str(path)}]})
    with pytest.raises(RuntimeError):
        serve.run(app, name="broken", route_prefix="/broken")
    try:
        status = serve.status().applications["broken"]
        assert status.status == ApplicationStatus.DEPLOY_FAILED
        message = status.deployments["broken"].message
        assert str(path) in message and cause in message
    finally:
        serve.delete("broken")
    r = client.post("/predict", content=SAMPLES[0].read_bytes(),
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200


def test_labels_that_do_not_match_the_model_fail_clearly(base_url, tmp_path: Path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    app = build_app({"models": [{"name": "mislabelled", "path": str(ROOT / "models/digits"),
                                 "labels_path": str(labels)}]})
    with pytest.raises(RuntimeError):
        serve.run(app, name="mislabelled", route_prefix="/mislabelled")
    try:
        message = serve.status().applications["mislabelled"].deployments["mislabelled"].message
        assert "has 2 labels but the model outputs 10 scores" in message
    finally:
        serve.delete("mislabelled")


def test_callers_of_a_model_with_no_replica_share_one_wait(base_url: str, tmp_path: Path):
    """Replicas that cannot be placed (here: a resource no node has) leave the
    model without a replica. Concurrent callers share one metadata fetch and
    its 503, rather than each waiting out its own timeout in turn."""
    config = with_test_app("unplaced", deployment={
        "num_replicas": 1, "ray_actor_options": {"num_cpus": 0, "resources": {"absent": 1}}})
    deploy_config(config, tmp_path)
    url = f"{base_url}/unplaced"
    try:
        wait_until(lambda: http_ok(f"{url}/healthz"), 120, "the unplaced app's ingress")
        image = {"content": SAMPLES[0].read_bytes(), "headers": {"Content-Type": "image/png"}}

        def predict(_: int) -> httpx.Response:
            return httpx.post(f"{url}/predict", **image, timeout=120)

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(predict, range(6)))
        waited = time.monotonic() - started
        assert [r.status_code for r in answers] == [503] * 6
        assert all("'digits' is not available" in r.json()["error"] for r in answers)
        # One fetch times out after 10 s; six in turn would take a minute.
        assert waited < 30
    finally:
        serve.delete("unplaced")
