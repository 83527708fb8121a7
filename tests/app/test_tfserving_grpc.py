"""TF Serving's gRPC methods in process: the ingress's mixin called as Serve's
gRPC proxy calls it (the request message and a context), on models that run
in this process, each answer compared with the REST route's for the same
request and each error with its status code and message. (TF Serving's own
stubs speak to the real proxy in the cluster tier.)"""

from __future__ import annotations

import base64
import re
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from grpc_health.v1 import health_pb2
from sklearn.datasets import load_digits
from starlette.testclient import TestClient
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)

from deployments.config import AppArgs
from deployments.errors import ServeError
from deployments.ingress.asgi import build_asgi
from deployments.ingress.auth import Gate
from deployments.ingress.dataplane import DataPlane
from deployments.ingress.protocols.health_grpc import HealthGrpcService
from deployments.ingress.protocols.tfserving_grpc import TFServingGrpcService
from deployments.metrics import IngressMetrics
from deployments.versions import Routing
from harness.inprocess import in_process_plane
from tests.app.conftest import config_args
from tests.common import SAMPLES, sample_label, signature_models


class Service(TFServingGrpcService, HealthGrpcService):
    """The mixin on a data plane, as the ingress deployment holds it."""

    def __init__(self, plane: DataPlane, args: AppArgs,
                 metrics: IngressMetrics) -> None:
        self._plane, self._limits, self._metrics = plane, args.limits, metrics
        self._gate = Gate(args.auth)


@dataclass
class Context:
    """What the methods read (the client's metadata) and set on Serve's
    ``RayServegRPCContext``."""

    code: grpc.StatusCode | None = None
    details: str = ""
    metadata: tuple[tuple[str, str], ...] = ()  # the client's

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return list(self.metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    trailing: tuple[tuple[str, str], ...] = ()  # what the answer's trailing metadata holds

    def request_id(self) -> str | None:  # Serve's (its metadata): none in process
        return None

    def trailing_metadata(self) -> list[tuple[str, str]]:
        return list(self.trailing)

    def set_trailing_metadata(self, metadata: list[tuple[str, str]]) -> None:
        self.trailing = tuple(metadata)


@dataclass
class App:
    service: Service
    http: TestClient
    counted: list[tuple[Any, ...]]

    def call(self, method: str, request: Any) -> Any:
        # On the test client's event loop, which the data plane's tasks live on.
        return self.http.portal.call(getattr(self.service, method), request, Context())

    def fails(self, method: str, request: Any) -> Context:
        context = Context()
        with pytest.raises(ServeError):
            self.http.portal.call(getattr(self.service, method), request, context)
        return context


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    root = signature_models()
    models = [*config_args().models, *AppArgs.model_validate({"models": [
        {"name": "tabular", "path": str(root / "tabular"), "scores_output": "approval",
         "labels_path": str(root / "tabular" / "labels.txt")},
        {"name": "examples", "path": str(root / "examples")},
        {"name": "examples_regress", "path": str(root / "examples"),
         "signature_name": "regress"}]}).models]
    args = config_args(models=[m.model_dump() for m in models])
    metrics = IngressMetrics([m.name for m in models])
    counted: list[tuple[Any, ...]] = []
    count = metrics.count
    metrics.count = lambda *a: (counted.append(a), count(*a))  # type: ignore[method-assign]
    plane = in_process_plane(args, metrics, {"digits_linear": Routing(labels={"stable": 1})})
    with TestClient(build_asgi(plane, args.limits, metrics, args.top_k)) as http:
        yield App(Service(plane, args, metrics), http, counted)


def predict_request(model: str, version: int | None = None, label: str = "",
                    signature: str = "", **inputs: Any) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model, signature
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


ROWS = load_digits().data[:6].astype(np.float32)


def test_predict_answers_as_the_rest_route(app: App):
    rest = app.http.post("/v1/models/digits_linear:predict", json={"instances": ROWS.tolist()})
    for spec in ({}, {"version": 1}, {"label": "stable"}):
        response = app.call("Predict", predict_request("digits_linear", **spec, pixels=ROWS))
        assert (response.model_spec.name, response.model_spec.version.value,
                response.model_spec.signature_name) == ("digits_linear", 1, "serving_default")
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]),
                                   rest.json()["predictions"], rtol=1e-6)
    assert app.counted[-1] == ("digits_linear", "tfserving-grpc", "OK")


def test_encoded_images_as_strings_for_the_image_input(app: App):
    blobs = [p.read_bytes() for p in SAMPLES]
    rest = app.http.post("/v1/models/digits:predict", json={"instances": [
        {"b64": base64.b64encode(b).decode()} for b in blobs]}).json()["predictions"]
    response = app.call("Predict", predict_request("digits", image=np.array(blobs, object)))
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    np.testing.assert_allclose(probabilities, rest, rtol=1e-6)
    predicted = [str(i) for i in probabilities.argmax(1)]
    assert sum(p == sample_label(s) for p, s in zip(predicted, SAMPLES, strict=True)) >= 9


def test_several_inputs_and_an_output_filter(app: App):
    ages = np.array([[30.0], [51.5]], np.float32)
    cities = np.array([[b"lyon"], [b"oslo"]], dtype=object)
    request = predict_request("tabular", age=ages, city=cities)
    request.output_filter.append("amount")
    response = app.call("Predict", request)
    rest = app.http.post("/v1/models/tabular:predict", json={"inputs": {
        "age": ages.tolist(), "city": [["lyon"], ["oslo"]]}}).json()["outputs"]
    assert list(response.outputs) == ["amount"]
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["amount"]), rest["amount"],
                               rtol=1e-6)


def examples_input(request: Any, context: bool = False) -> Any:
    examples = [{"x": [1.0, 2.0], "color": [b"blue"]}, {"x": [0.5, -1.5]}]
    listed = (request.input.example_list_with_context if context
              else request.input.example_list)
    for features in examples:
        listed.examples.add().CopyFrom(tf.train.Example(features=tf.train.Features(feature={
            k: tf.train.Feature(bytes_list=tf.train.BytesList(value=v)) if k == "color"
            else tf.train.Feature(float_list=tf.train.FloatList(value=v))
            for k, v in features.items()})))
    if context:
        listed.context.features.feature["color"].bytes_list.value.append(b"green")
    return request


def test_classify_and_regress_answer_as_the_rest_routes(app: App):
    request = examples_input(classification_pb2.ClassificationRequest())
    request.model_spec.name = "examples"
    response = app.call("Classify", request)
    rest = app.http.post("/v1/models/examples:classify", json={"examples": [
        {"x": [1.0, 2.0], "color": "blue"}, {"x": [0.5, -1.5]}]}).json()["results"]
    assert [[(c.label, pytest.approx(c.score)) for c in r.classes]
            for r in response.result.classifications] == [[tuple(p) for p in r] for r in rest]
    assert response.model_spec.signature_name == "serving_default"

    request = examples_input(regression_pb2.RegressionRequest(), context=True)
    request.model_spec.name = "examples_regress"
    response = app.call("Regress", request)
    rest = app.http.post("/v1/models/examples_regress:regress", json={
        "context": {"color": "green"}, "examples": [{"x": [1.0, 2.0], "color": "blue"},
                                                    {"x": [0.5, -1.5]}]})
    # The REST route refuses a feature in both places; gRPC lets the example's win.
    assert rest.status_code == 400
    values = [r.value for r in response.result.regressions]
    assert values == pytest.approx([1.0 + 2.0 + 2.0, 0.5 - 1.5 + 1.0])  # blue 2, green 1


def test_metadata_and_status_are_the_rest_documents_as_protos(app: App):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "digits"
    response = app.call("GetModelMetadata", request)
    defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(defs)
    rest = app.http.get("/v1/models/digits/metadata").json()
    assert json_format.MessageToDict(defs, preserving_proto_field_name=True) == json_format.\
        MessageToDict(json_format.ParseDict(rest["metadata"]["signature_def"],
                                            get_model_metadata_pb2.SignatureDefMap()),
                      preserving_proto_field_name=True)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "digits_linear"
    for spec in ({}, {"version_label": "stable"}):
        for field, value in spec.items():
            setattr(status_request.model_spec, field, value)
        (status,) = app.call("GetModelStatus", status_request).model_version_status
        assert (status.version, status.state) == (1, status.AVAILABLE)


@pytest.mark.parametrize(
    ("method", "request_", "code", "message"),
    [
        ("Predict", predict_request("nope", pixels=ROWS), "NOT_FOUND", "no model named 'nope'"),
        ("Predict", predict_request("digits_linear", version=7, pixels=ROWS), "NOT_FOUND",
         "has no version '7'"),
        ("Predict", predict_pb2.PredictRequest(), "INVALID_ARGUMENT", "^Missing ModelSpec$"),
        ("Predict", predict_request("", pixels=ROWS), "INVALID_ARGUMENT",
         r"^ModelSpec has no name specified\.$"),
        # A version set is that version, 0 too (TF Serving: ServableRequest::Specific).
        ("Predict", predict_request("digits_linear", version=0, pixels=ROWS), "NOT_FOUND",
         "has no version '0'"),
        ("Predict", predict_request("digits_linear", label="canary", pixels=ROWS),
         "INVALID_ARGUMENT", "Unrecognized servable version label: canary .model "
                             "'digits_linear' has labels: stable=1"),
        ("Predict", predict_request("digits_linear", pixels=ROWS[:, :63]), "INVALID_ARGUMENT",
         r"shape \[6, 63\], expected float32\[N, 64\]"),
        ("Predict", predict_request("digits_linear", pixels=ROWS.astype(np.complex64)),
         "INVALID_ARGUMENT", "dtype DT_COMPLEX64 is not supported"),
        ("Predict", predict_request("digits_linear", pixels=np.array([[b"x"] * 64])),
         "INVALID_ARGUMENT", r"'pixels' has dtype object, expected float32\[N, 64\]"),
        ("Predict", predict_request("digits_linear", signature="other", pixels=ROWS),
         "INVALID_ARGUMENT", 'Serving signature name: "other" not found'),
        ("Predict", predict_request("digits_linear", x=ROWS), "INVALID_ARGUMENT",
         "missing 'pixels'; unknown 'x'"),
        ("Predict", predict_request("digits_linear", pixels=np.zeros((300, 64), np.float32)),
         "RESOURCE_EXHAUSTED", "input 'pixels' has 300 rows, the limit is 256"),
        ("Classify", examples_input(classification_pb2.ClassificationRequest(
            model_spec={"name": "digits"})), "INVALID_ARGUMENT", "not a classify signature"),
        ("GetModelMetadata", get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": "digits"}), "INVALID_ARGUMENT", "must name a metadata_field"),
        ("GetModelStatus", get_model_status_pb2.GetModelStatusRequest(
            model_spec={"name": "digits", "version": {"value": 3}}), "NOT_FOUND",
         "has no version '3'"),
        ("MultiInference", inference_pb2.MultiInferenceRequest(), "INVALID_ARGUMENT",
         "must have at least one task"),
        # No ray-tf-serve process to apply it (tests/integration/test_cli.py does).
        ("HandleReloadConfigRequest", model_management_pb2.ReloadConfigRequest(),
         "UNIMPLEMENTED", "models are configured in the app's YAML"),
    ],
)
def test_errors_carry_tf_servings_status_codes(app: App, method, request_, code, message):
    context = app.fails(method, request_)
    assert context.code == getattr(grpc.StatusCode, code)
    assert re.search(message, context.details), context.details
    assert app.counted[-1][1:] == ("tfserving-grpc", code)


def test_a_tiny_message_declaring_millions_of_strings_is_refused_before_any_is_made(app: App):
    request = predict_request("digits")
    image = request.inputs["image"]
    image.dtype = tf.string.as_datatype_enum
    image.tensor_shape.dim.add(size=1)
    image.tensor_shape.dim.add(size=4_000_000)
    image.string_val.append(b"x")
    assert request.ByteSize() < 40
    tracemalloc.start()
    try:
        context = app.fails("Predict", request)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert context.details == ("input 'image' has 4000000 DT_STRING elements, the limit is "
                               "256 (max_rows)")
    assert peak < 2**20  # a 4M-element array of pointers alone is 32 MB


def test_more_input_tensors_than_any_signature_takes_are_refused_before_any_is_read(app: App):
    """Each tensor costs parsing work: 100,000 of them (2.6 MB) took 0.9 s of
    CPU to parse before they were counted; now none is parsed."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits_linear"
    for i in range(100_000):
        tensor = request.inputs[f"x{i}"]
        tensor.dtype, tensor.float_val[:] = types_pb2.DT_FLOAT, [1.0]
    started = time.process_time()
    context = app.fails("Predict", request)
    assert time.process_time() - started < 0.5
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert context.details.startswith("input size does not match signature: the request has "
                                      "100000 input tensors, model 'digits_linear' takes at "
                                      "most 1")
    body = {"inputs": [{"name": f"x{i}", "datatype": "FP32", "shape": [1], "data": [1.0]}
                       for i in range(100_000)]}
    rest = app.http.post("/v2/models/digits_linear/infer", json=body)
    assert rest.status_code == 400 and "has 100000 input tensors" in rest.json()["error"]


def test_rest_and_grpc_requests_meet_in_the_data_planes_one_inference_path(
        app: App, monkeypatch: pytest.MonkeyPatch):
    """A KServe V2 REST request and a TF Serving gRPC one parse and encode
    differently; between, both take ``DataPlane.infer``, as every protocol does."""
    plane = app.service._plane
    seen: list[tuple[str, np.ndarray]] = []
    infer = plane.infer

    async def recorded(meta: Any, inputs: Any, *args: Any) -> Any:
        seen.append((meta.name, np.array(inputs["pixels"])))
        return await infer(meta, inputs, *args)

    monkeypatch.setattr(plane, "infer", recorded)
    v2 = app.http.post("/v2/models/digits_linear/infer", json={"inputs": [
        {"name": "pixels", "datatype": "FP32", "shape": list(ROWS.shape),
         "data": ROWS.ravel().tolist()}]})
    assert v2.status_code == 200, v2.text
    answer = app.call("Predict", predict_request("digits_linear", pixels=ROWS))
    assert [name for name, _ in seen] == ["digits_linear", "digits_linear"]
    for _, pixels in seen:
        np.testing.assert_array_equal(pixels, ROWS)
    by_name = {o["name"]: o for o in v2.json()["outputs"]}
    np.testing.assert_allclose(
        np.reshape(by_name["probabilities"]["data"], by_name["probabilities"]["shape"]),
        tf.make_ndarray(answer.outputs["probabilities"]), rtol=1e-6)


def test_grpc_health_checks_answer_for_tf_servings_services(app: App):
    """--enable_grpc_healthcheck_service, always on: TF Serving's names are
    SERVING while the server runs; V2's is the readiness of every model."""
    for service in ("", "ModelService", "PredictionService",
                    "tensorflow.serving.PredictionService", "inference.GRPCInferenceService"):
        answer = app.call("Check", health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
    unknown = app.fails("Check", health_pb2.HealthCheckRequest(service="SessionService"))
    assert unknown.code == grpc.StatusCode.NOT_FOUND
    assert unknown.details == "unknown service 'SessionService'"
