"""Tokens on the cluster: an app with ``auth`` on (a token file) beside the
main one, at ``/locked``: HTTP through Serve's proxy with its route prefix
(probes open, the API not), gRPC through Serve's real gRPC proxy with
tritonclient's and TF Serving's own stubs (the token in the metadata reaches
the ingress; the V2 health methods open)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from ray import serve
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
from tritonclient.utils import InferenceServerException

from deployments.app import build_app
from tests.common import ROOT

LOCKED = "locked"
TOKEN = "cluster-token-0123456789abcdef"
BEARER = f"Bearer {TOKEN}"
MODEL = {"name": "digits_linear", "path": str(ROOT / "models" / "digits_linear"),
         "labels_path": str(ROOT / "models" / "digits_linear" / "labels.txt")}


@pytest.fixture(scope="module")
def locked(base_url: str, tmp_path_factory) -> Iterator[str]:
    """The app's URL; its ingress reads the token file on this machine."""
    tokens: Path = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    serve.run(build_app({"models": [MODEL], "auth": {"tokens_file": str(tokens)}}),
              name=LOCKED, route_prefix=f"/{LOCKED}")
    yield f"{base_url}/{LOCKED}"
    serve.delete(LOCKED, _blocking=False)  # (goes while the next module starts)


def test_http_through_serves_proxy(locked: str):
    rows = np.zeros((1, 64), np.float32).tolist()
    with httpx.Client(base_url=locked, timeout=60) as http:
        assert http.get("/healthz").status_code == 200  # under the route prefix
        assert http.get("/v2/health/ready").status_code == 200
        refused = http.post("/v1/models/digits_linear:predict", json={"instances": rows})
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"]
        assert refused.json() == {"error": "a token is required: send Authorization: "
                                           "Bearer <token>"}
        answered = http.post("/v1/models/digits_linear:predict", json={"instances": rows},
                             headers={"Authorization": BEARER})
        assert answered.status_code == 200, answered.text


def test_tritonclient_over_serves_grpc_proxy(locked: str, grpc_address: str):
    client = grpcclient.InferenceServerClient(grpc_address)
    app = {"application": LOCKED}
    assert client.is_server_live(headers=app) and client.is_server_ready(headers=app)
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        client.get_model_metadata("digits_linear", headers=app)
    meta = client.get_model_metadata("digits_linear",
                                     headers={**app, "authorization": BEARER})
    assert meta.name == "digits_linear"


def test_tf_servings_stub_over_serves_grpc_proxy(locked: str, grpc_address: str):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "digits_linear"
    with grpc.insecure_channel(grpc_address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetModelStatus(request, metadata=[("application", LOCKED)], timeout=60)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert refused.value.details().startswith("a token is required")
        status = stub.GetModelStatus(request, timeout=60, metadata=[
            ("application", LOCKED), ("authorization", BEARER)])
    assert status.model_version_status[0].state == \
        get_model_status_pb2.ModelVersionStatus.AVAILABLE
