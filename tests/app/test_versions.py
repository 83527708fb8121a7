"""Several versions of one model behind labels, on every HTTP protocol: TF
Serving's /labels/ routes and status, a V2 version string that is a label."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import numpy as np
import pytest
from sklearn.datasets import load_digits
from starlette.testclient import TestClient

from deployments.config import AppArgs
from deployments.versions import Routing
from tests.app.conftest import build_app
from tests.common import ROOT

LINEAR = ROOT / "models" / "digits_linear"


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    base = tmp_path_factory.mktemp("linear")
    for version in (1, 2, 3):  # the same SavedModel three times
        shutil.copytree(LINEAR / "1", base / str(version))
    model = {"name": "linear", "path": str(base), "labels_path": str(LINEAR / "labels.txt"),
             "version_policy": {"specific": [1, 2]}}
    routing = {"linear": Routing(labels={"stable": 1, "canary": 2}, traffic={"canary": 1})}
    with TestClient(build_app(AppArgs.model_validate({"models": [model]}), routing),
                    raise_server_exceptions=False) as c:
        yield c


def rows() -> list[list[float]]:
    return load_digits().data[:3].astype(np.float32).tolist()


def test_labels_and_versions_are_never_split_by_the_traffic_split(client: TestClient):
    """Every request that names no version goes to the canary (weight 1 of 1)."""
    for path in ("/v2/models/linear/infer", "/v2/models/linear/versions/stable/infer",
                 "/v2/models/linear/versions/1/infer"):
        versions = {client.post(path, json=v2_body()).json()["model_version"]
                    for _ in range(5)}
        assert versions == ({"2"} if "versions" not in path else {"1"}), path
    by_label = client.post("/v1/models/linear/labels/stable:predict",
                           json={"instances": rows()}).json()
    split = client.post("/v1/models/linear:predict", json={"instances": rows()}).json()
    assert by_label == split  # the same weights; the version shows on V2 above


def test_labels_route_tf_serving_requests_to_their_versions(client: TestClient):
    by_version = client.post("/v1/models/linear/versions/1:predict", json={"instances": rows()})
    by_label = client.post("/v1/models/linear/labels/stable:predict", json={"instances": rows()})
    assert by_label.status_code == 200 and by_label.json() == by_version.json()
    status = client.get("/v1/models/linear/labels/canary").json()
    assert status == {"model_version_status": [{"version": "2", "state": "AVAILABLE",
                                                "status": {"error_code": "OK",
                                                           "error_message": ""}}]}
    assert [s["version"] for s in client.get("/v1/models/linear").json()[
        "model_version_status"]] == ["2", "1"]  # the policy's versions only
    meta = client.get("/v1/models/linear/labels/canary/metadata").json()
    assert meta["model_spec"]["version"] == "2"


def v2_body() -> dict:
    return {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [3, 64],
                        "data": np.ravel(rows()).tolist()}]}


def test_a_v2_version_may_be_a_label(client: TestClient):
    answer = client.post("/v2/models/linear/versions/canary/infer", json=v2_body())
    assert answer.status_code == 200 and answer.json()["model_version"] == "2"
    assert client.get("/v2/models/linear/versions/stable/ready").status_code == 200


@pytest.mark.parametrize(("method", "path", "status", "message"), [
    ("POST", "/v1/models/linear/labels/beta:predict", 400,  # TF Serving's status and words
     "Unrecognized servable version label: beta (model 'linear' has labels: canary=2, "
     "stable=1)"),
    ("GET", "/v1/models/linear/labels/beta", 400, "Unrecognized servable version label: beta"),
    ("POST", "/v1/models/linear/versions/3:predict", 404,
     "Servable not found for request: Specific(linear, 3): model 'linear' has no version '3'"),
    ("GET", "/v1/models/linear/versions/3", 404, "has no version '3'"),
    ("POST", "/v2/models/linear/versions/beta/infer", 404, "has no version 'beta'"),
])
def test_unknown_labels_and_unserved_versions_are_refused(client, method, path, status,
                                                          message):
    body = v2_body() if path.startswith("/v2") else {"instances": rows()}
    response = client.request(method, path, json=body)
    assert response.status_code == status
    assert message in response.json()["error"]
