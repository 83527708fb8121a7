"""Several models in one app, each its own deployment, and several versions of
one model, addressed the same way by every protocol."""

from __future__ import annotations

import concurrent.futures
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from ray import serve

from deployments.app import build_app
from harness.cluster import wait_until
from tests.common import APP_NAME, ROOT, SAMPLES

VERSIONS_APP = "versions"


def run_versions_app(base: Path, versions: list[int]) -> None:
    for version in versions:
        if not (base / str(version)).exists():
            shutil.copytree(ROOT / "models" / "digits" / "1", base / str(version))
    app = build_app({"models": [{"name": "digits", "path": str(base), "versions": versions,
                                 "input": "image"}]})
    serve.run(app, name=VERSIONS_APP, route_prefix=f"/{VERSIONS_APP}")


@pytest.fixture(scope="module")
def versions_base(base_url: str, tmp_path_factory) -> Iterator[Path]:
    """A second app serving two versions of the digits model from one base path."""
    base = tmp_path_factory.mktemp("models") / "digits"
    run_versions_app(base, [1, 2])
    yield base
    serve.delete(VERSIONS_APP, _blocking=False)  # (goes while the next module starts)


@pytest.fixture(scope="module")
def versions_url(base_url: str, versions_base: Path) -> str:
    return f"{base_url}/{VERSIONS_APP}"


def test_versions_are_served_side_by_side(versions_url: str):
    with httpx.Client(base_url=versions_url, timeout=60) as c:
        image = {"content": SAMPLES[3].read_bytes(), "headers": {"Content-Type": "image/png"}}
        assert c.post("/predict", **image).json()["version"] == 2  # the highest by default
        one = c.post("/models/digits/versions/1/predict", **image).json()
        two = c.post("/models/digits/versions/2/predict", **image).json()
        assert (one["version"], two["version"]) == (1, 2)
        assert one["predictions"] == two["predictions"]  # same weights in both
        status = c.get("/v1/models/digits").json()["model_version_status"]
        assert [s["version"] for s in status] == ["2", "1"]
        assert c.get("/v2/models/digits").json()["versions"] == ["1", "2"]
        r = c.post("/v2/models/digits/versions/1/infer", json={"inputs": [
            {"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1],
             "data": np.zeros(784).tolist()}]})
        assert r.status_code == 200 and r.json()["model_version"] == "1"
        missing = c.get("/v2/models/digits/versions/3")
        assert missing.status_code == 404
        assert missing.json()["error"] == ("Servable not found for request: Specific(digits, 3): "
                                           "model 'digits' has no version '3' (it serves: 1, 2)")


def test_handle_callers_choose_model_and_version(versions_url: str):
    app = serve.get_app_handle(VERSIONS_APP)
    batch = np.zeros((2, 28, 28, 1), np.float32)
    answer = app.predict.remote(batch, model="digits", version=1).result()
    assert answer["version"] == 1 and len(answer["predictions"]) == 2
    meta = app.metadata.remote(version=2).result()
    assert meta.version == 2 and meta.takes_images


def test_every_version_is_loaded_in_each_replica(versions_url: str):
    stats = serve.get_deployment_handle("digits", VERSIONS_APP).stats.remote(1).result()
    assert stats["versions"] == [1, 2]


def test_model_handles_take_arrays_directly(base_url: str):
    """Any Ray job may skip the preprocessor and call a model deployment."""
    model = serve.get_deployment_handle("digits_linear", APP_NAME)
    outputs = model.remote(np.zeros((3, 64), np.float32)).result()
    assert outputs["probabilities"].shape == (3, 10)



def test_a_redeploy_adding_a_version_serves_it(versions_url: str, versions_base: Path):
    assert serve.get_app_handle(VERSIONS_APP).metadata.remote().result().version == 2
    run_versions_app(versions_base, [1, 2, 3])

    def served() -> list[str]:
        return httpx.get(f"{versions_url}/v2/models/digits", timeout=30).json()["versions"]

    wait_until(lambda: served() == ["1", "2", "3"], 30, "version 3 to be listed")
    image = {"content": SAMPLES[3].read_bytes(), "headers": {"Content-Type": "image/png"}}
    assert httpx.post(f"{versions_url}/predict", **image, timeout=30).json()["version"] == 3


def test_a_redeploy_dropping_the_highest_version_fails_no_versionless_request(
    versions_url: str, versions_base: Path
):
    run_versions_app(versions_base, [1, 2, 3])
    wait_until(lambda: serve.get_app_handle(VERSIONS_APP).metadata.remote().result().version
               == 3, 60, "version 3 to be the highest")
    image = {"content": SAMPLES[3].read_bytes(), "headers": {"Content-Type": "image/png"}}
    stop, answers = threading.Event(), []

    def load() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                r = client.post(f"{versions_url}/predict", **image)
                answers.append((r.status_code, r.json().get("version")))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load) for _ in range(4)]
        run_versions_app(versions_base, [1, 2])  # version 3 leaves with its replicas
        wait_until(lambda: answers and answers[-1] == (200, 2), 60, "answers from version 2")
        stop.set()
        for f in futures:
            f.result()
    assert {status for status, _ in answers} == {200}, answers
    assert {version for _, version in answers} <= {2, 3}
