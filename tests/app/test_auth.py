"""Authentication in process: every route family and every gRPC method of
both services with and without a token, the probes open, CORS preflights
answered without one, and status routes showing a version's load error in
full only to callers with a token (or when configured)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from sklearn.datasets import load_digits
from starlette.testclient import TestClient
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)
from tritonclient.grpc import service_pb2 as pb

from deployments.config import AppArgs
from deployments.errors import ServeError
from deployments.ingress.asgi import build_asgi
from deployments.ingress.auth import Gate
from deployments.ingress.dataplane import DataPlane
from deployments.ingress.protocols.health_grpc import HealthGrpcService
from deployments.ingress.protocols.tfserving_grpc import TFServingGrpcService
from deployments.ingress.protocols.v2_grpc import V2GrpcService
from deployments.ingress.registry import ModelRegistry
from deployments.metrics import IngressMetrics
from deployments.versions import VersionStatus
from harness.inprocess import in_process_plane
from tests.app.conftest import config_args
from tests.app.test_tfserving_grpc import Context

TOKEN, ROTATED = "token-0123456789abcdef0123", "token-fedcba9876543210fedc"
ENV = {"RAY_TF_SERVE_TOKENS": f"{TOKEN},{ROTATED}"}
AUTH = {"tokens_env": "RAY_TF_SERVE_TOKENS"}
ORIGIN = "https://app.example.com"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


class Service(V2GrpcService, TFServingGrpcService, HealthGrpcService):
    """Both gRPC mixins on a data plane, as the ingress deployment holds them."""

    def __init__(self, plane: DataPlane, args: AppArgs, gate: Gate) -> None:
        self._plane, self._limits, self._gate = plane, args.limits, gate
        self._metrics = IngressMetrics(plane.registry.names)


class App:
    """One app, HTTP and gRPC, behind one gate."""

    def __init__(self, http: TestClient, service: Service) -> None:
        self.http, self.service = http, service

    def rpc(self, method: str, request: Any, *metadata: tuple[str, str]) -> Context:
        """The call's context: the code it set (None: OK)."""
        context = Context(metadata=metadata)
        try:  # on the test client's event loop, which the data plane's tasks live on
            self.http.portal.call(getattr(self.service, method), request, context)
        except ServeError:
            assert context.code is not None
        return context


def app_for(args: AppArgs, plane: DataPlane) -> Iterator[App]:
    gate = Gate(args.auth, ENV)
    metrics = IngressMetrics(plane.registry.names)
    asgi = build_asgi(plane, args.limits, metrics, args.top_k, gate, args.cors)
    with TestClient(asgi, raise_server_exceptions=False) as http:
        yield App(http, Service(plane, args, gate))


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    args = config_args(auth={**AUTH, "api_key_header": True},
                       cors={"allow_origins": [ORIGIN]})
    yield from app_for(args, in_process_plane(args, IngressMetrics(
        [m.name for m in args.models])))


ROWS = load_digits().data[:2].astype(np.float32).tolist()
V2_BODY = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64],
                       "data": np.ravel(ROWS).tolist()}]}
ROUTES = [  # one of each family: native, TF Serving, V2, the document, the demo page
    ("GET", "/models", None), ("POST", "/models/digits_linear/predict", {"instances": ROWS}),
    ("GET", "/v1/models/digits_linear", None), ("GET", "/v1/models/digits_linear/metadata", None),
    ("POST", "/v1/models/digits_linear:predict", {"instances": ROWS}),
    ("GET", "/v2", None), ("GET", "/v2/models/digits_linear", None),
    ("GET", "/v2/models/digits_linear/ready", None),
    ("POST", "/v2/models/digits_linear/infer", V2_BODY),
    ("GET", "/openapi.json", None), ("GET", "/ui/", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_family_needs_a_token(app: App, method, path, body):
    refused = app.http.request(method, path, json=body)
    assert refused.status_code == 401, refused.text
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert refused.json() == {"error": "a token is required: send Authorization: Bearer "
                                       "<token> or X-API-Key: <token>"}
    wrong = app.http.request(method, path, json=body, headers={"Authorization": "Bearer x"})
    assert wrong.status_code == 401 and wrong.json() == {"error": "the token is not valid"}
    for headers in (BEARER, {"Authorization": f"Bearer {ROTATED}"}, {"X-API-Key": TOKEN}):
        answered = app.http.request(method, path, json=body, headers=headers)
        assert answered.status_code == 200, (headers, answered.text)


def test_a_body_is_refused_before_it_is_read(app: App):
    huge = app.http.post("/v1/models/digits_linear:predict", content=b"{}",
                         headers={"Content-Length": str(2**40)})
    assert huge.status_code == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v2/health/live",
                                  "/v2/health/ready"])
def test_probes_need_no_token(app: App, path):
    assert app.http.get(path).status_code == 200


def test_cors_preflight_needs_no_token_and_refusals_reach_the_page(app: App):
    preflight = app.http.options("/v2/models/digits_linear/infer", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    refused = app.http.get("/models", headers={"Origin": ORIGIN})
    assert refused.status_code == 401  # the page can read why
    assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN
    other = app.http.options("/models", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert other.status_code == 400 and "Access-Control-Allow-Origin" not in other.headers


def test_without_cors_settings_no_cross_origin_headers():
    args = config_args()
    app = build_asgi(in_process_plane(args, IngressMetrics([])), args.limits,
                     IngressMetrics([m.name for m in args.models]), args.top_k)
    with TestClient(app) as http:
        answer = http.get("/healthz", headers={"Origin": ORIGIN})
    assert answer.status_code == 200 and "Access-Control-Allow-Origin" not in answer.headers


RPCS: dict[str, Any] = {  # every method of both services, with an empty request
    "ServerLive": pb.ServerLiveRequest(), "ServerReady": pb.ServerReadyRequest(),
    "ModelReady": pb.ModelReadyRequest(name="digits_linear"),
    "ServerMetadata": pb.ServerMetadataRequest(),
    "ModelMetadata": pb.ModelMetadataRequest(name="digits_linear"),
    "ModelInfer": pb.ModelInferRequest(model_name="digits_linear"),
    "Predict": predict_pb2.PredictRequest(),
    "Classify": classification_pb2.ClassificationRequest(),
    "Regress": regression_pb2.RegressionRequest(),
    "MultiInference": inference_pb2.MultiInferenceRequest(),
    "GetModelMetadata": get_model_metadata_pb2.GetModelMetadataRequest(),
    "GetModelStatus": get_model_status_pb2.GetModelStatusRequest(),
    "HandleReloadConfigRequest": model_management_pb2.ReloadConfigRequest(),
    "Check": health_pb2.HealthCheckRequest(), "Watch": health_pb2.HealthCheckRequest(),
    # V2's methods not offered (UNIMPLEMENTED past the gate), each with its request.
    **{method.name: getattr(pb, method.input_type.name)()
       for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
       if method.name not in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                              "ModelMetadata", "ModelInfer")},
}


def test_the_list_holds_every_grpc_method():
    assert set(RPCS) == {name for name in dir(Service) if name[0].isupper()}


@pytest.mark.parametrize("method", sorted(RPCS))
def test_every_grpc_method_needs_a_token_but_the_health_ones(app: App, method):
    refused = app.rpc(method, RPCS[method])
    wrong = app.rpc(method, RPCS[method], ("authorization", f"Bearer {TOKEN[:-1]}"))
    if method in ("ServerLive", "ServerReady", "Check", "Watch"):  # probes send no token
        assert refused.code is wrong.code is (
            grpc.StatusCode.UNIMPLEMENTED if method == "Watch" else None)
        return
    assert refused.code is wrong.code is grpc.StatusCode.UNAUTHENTICATED
    assert refused.details.startswith("a token is required")
    assert wrong.details == "the token is not valid"
    for metadata in (("authorization", f"Bearer {ROTATED}"), ("x-api-key", TOKEN)):
        # past the gate: OK, or what the empty request earns
        assert app.rpc(method, RPCS[method], metadata).code is not \
            grpc.StatusCode.UNAUTHENTICATED


LOAD_ERROR = ("OSError: SavedModel file does not exist at: /mnt/nodes/7/broken/2/"
              "{saved_model.pbtxt|saved_model.pb}; s3://team-bucket/models/broken/2 failed")
REDACTED = "OSError: SavedModel file does not exist at: <path>; <url> failed"


class Broken:
    """A model whose version 2 failed to load, as its replica reports it."""

    async def statuses(self) -> list[VersionStatus]:
        return [VersionStatus(2, "END", LOAD_ERROR), VersionStatus(1, "AVAILABLE")]


@pytest.mark.parametrize(("auth", "headers", "shown"), [
    ({}, {}, REDACTED),  # auth off: paths and URLs removed by default
    ({"status_detail": "full"}, {}, LOAD_ERROR),  # ... unless configured
    (AUTH, BEARER, LOAD_ERROR),  # a caller with a token reads it all
    ({**AUTH, "exempt": ["/v1/models/*"]}, {}, REDACTED),  # open status, no token
    ({**AUTH, "exempt": ["/v1/models/*"], "status_detail": "full"}, {}, LOAD_ERROR),
])
def test_a_load_error_in_full_only_to_callers_with_a_token(auth, headers, shown):
    args = AppArgs.model_validate({"models": [{"name": "broken", "path": "x"}],
                                   "auth": auth})
    plane = DataPlane(ModelRegistry({"broken": Broken()}, IngressMetrics(["broken"])),
                      args.limits)
    for app in app_for(args, plane):
        rest = app.http.get("/v1/models/broken", headers=headers).json()
        assert [s["status"]["error_message"] for s in rest["model_version_status"]] == \
            [shown, ""]
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "broken"
        context = Context(metadata=tuple((k.lower(), v) for k, v in headers.items()))
        if "exempt" in auth:  # HTTP paths open no gRPC method but the health ones
            assert app.rpc("GetModelStatus", request).code is \
                grpc.StatusCode.UNAUTHENTICATED
            continue
        status = app.http.portal.call(app.service.GetModelStatus, request, context)
        assert status.model_version_status[0].status.error_message == shown
