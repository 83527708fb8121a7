"""TF Serving's gRPC API on the cluster, spoken by TF Serving's own generated
stubs (``PredictionServiceStub``, ``ModelServiceStub``) through Serve's gRPC
proxy, unmodified: answers as the REST routes give them, on models of one
image input, several inputs of several dtypes, and classify/regress
signatures; errors with TF Serving's status codes."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from ray import serve
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from deployments.app import build_app
from tests.common import APP_NAME, SAMPLES, sample_label, signature_models

# Serve's gRPC proxy routes by the "application" metadata where several apps run.
MAIN = (("application", APP_NAME),)
MODELS_APP = "tfserving-grpc"
MODELS = (("application", MODELS_APP),)


@pytest.fixture(scope="module")
def models_app(base_url: str) -> Iterator[None]:
    """A model of several inputs and dtypes, and classify/regress signatures."""
    root = signature_models()
    serve.run(build_app({"models": [
        {"name": "tabular", "path": str(root / "tabular"), "scores_output": "approval",
         "labels_path": str(root / "tabular" / "labels.txt")},
        {"name": "examples", "path": str(root / "examples")},
        {"name": "examples_regress", "path": str(root / "examples"),
         "signature_name": "regress"},
    ]}), name=MODELS_APP, route_prefix=f"/{MODELS_APP}")
    yield
    serve.delete(MODELS_APP, _blocking=False)  # (goes while the next module starts)


@pytest.fixture(scope="module")
def channel(grpc_address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(grpc_address) as c:
        yield c


@pytest.fixture(scope="module")
def prediction(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict_request(model: str, label: str = "", **inputs: np.ndarray
                    ) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.version_label = label
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def digit_rows() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data[:20].astype(np.float32)


def test_predict_answers_as_rest_does(prediction, client: httpx.Client):
    rows = digit_rows()
    rest = client.post("/v1/models/digits_linear:predict", json={"instances": rows.tolist()})
    response = prediction.Predict(predict_request("digits_linear", pixels=rows), metadata=MAIN,
                                  timeout=60)
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("digits_linear", 1, "serving_default")
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]),
                               rest.json()["predictions"], rtol=1e-6)

    blobs = [p.read_bytes() for p in SAMPLES]  # encoded images, as strings
    rest = client.post("/v1/models/digits:predict", json={"instances": [
        {"b64": base64.b64encode(b).decode()} for b in blobs]})
    response = prediction.Predict(predict_request("digits", image=np.array(blobs, object)),
                                  metadata=MAIN, timeout=60)
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    np.testing.assert_allclose(probabilities, rest.json()["predictions"], rtol=1e-6)
    predicted = [str(i) for i in probabilities.argmax(1)]
    assert sum(p == sample_label(s) for p, s in zip(predicted, SAMPLES, strict=True)) >= 9


def test_through_serves_fallback_proxy():
    """Serve's own proxy (HAProxy's fallback) pickles each request for the
    replica: TF Serving's messages must survive it."""
    port = os.environ["RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"]  # chosen by start_cluster
    with grpc.insecure_channel(f"127.0.0.1:{port}") as fallback:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(fallback)
        response = stub.Predict(predict_request("digits_linear", pixels=digit_rows()),
                                metadata=MAIN, timeout=60)
    assert tf.make_ndarray(response.outputs["probabilities"]).shape == (20, 10)


def test_several_inputs_of_several_dtypes(models_app, prediction, base_url: str):
    ages = np.array([[22.0], [64.0]], np.float32)
    request = predict_request("tabular", age=ages,
                              city=np.array([[b"lima"], [b"oslo"]], dtype=object))
    response = prediction.Predict(request, metadata=MODELS, timeout=60)
    rest = httpx.post(f"{base_url}/{MODELS_APP}/v1/models/tabular:predict", timeout=60,
                      json={"inputs": {"age": ages.tolist(), "city": [["lima"], ["oslo"]]}})
    for name in ("approval", "amount"):
        np.testing.assert_allclose(tf.make_ndarray(response.outputs[name]),
                                   rest.json()["outputs"][name], rtol=1e-6)
    request.output_filter.append("amount")
    assert list(prediction.Predict(request, metadata=MODELS, timeout=60).outputs) == ["amount"]


def examples(listed) -> None:
    for x, color in (([1.0, 2.0], b"blue"), ([0.5, -1.5], b"green")):
        example = listed.examples.add()
        example.features.feature["x"].float_list.value.extend(x)
        example.features.feature["color"].bytes_list.value.append(color)


def test_classify_and_regress(models_app, prediction, base_url: str):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "examples"
    examples(request.input.example_list)
    response = prediction.Classify(request, metadata=MODELS, timeout=60)
    rest = httpx.post(f"{base_url}/{MODELS_APP}/v1/models/examples:classify", timeout=60,
                      json={"examples": [{"x": [1.0, 2.0], "color": "blue"},
                                         {"x": [0.5, -1.5], "color": "green"}]})
    assert [[(c.label, pytest.approx(c.score)) for c in r.classes]
            for r in response.result.classifications] == [
        [tuple(pair) for pair in r] for r in rest.json()["results"]]

    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "examples_regress"
    examples(request.input.example_list)
    response = prediction.Regress(request, metadata=MODELS, timeout=60)
    assert [r.value for r in response.result.regressions] == pytest.approx(
        [1.0 + 2.0 + 2.0, 0.5 - 1.5 + 1.0])  # x summed, plus blue's 2 or green's 1


def test_metadata_and_status(prediction, channel: grpc.Channel, client: httpx.Client):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "digits"
    response = prediction.GetModelMetadata(request, metadata=MAIN, timeout=60)
    assert (response.model_spec.name, response.model_spec.version.value) == ("digits", 1)
    defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(defs)
    signature = defs.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert [d.size for d in signature.inputs["image"].tensor_shape.dim] == [-1, 28, 28, 1]

    models = model_service_pb2_grpc.ModelServiceStub(channel)
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "digits"
    (version,) = models.GetModelStatus(status, metadata=MAIN, timeout=60).model_version_status
    rest = client.get("/v1/models/digits").json()["model_version_status"][0]
    assert (version.version, version.state) == (int(rest["version"]), version.AVAILABLE)
    assert rest["state"] == "AVAILABLE" and version.status.error_message == ""
    # An app run from a YAML has no ray-tf-serve process to reload its models.
    with pytest.raises(grpc.RpcError) as refused:
        models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(),
                                         metadata=MAIN, timeout=60)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "models are configured in the app's YAML" in refused.value.details()


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (predict_request("no_such_model", pixels=np.zeros((1, 64), np.float32)),
         grpc.StatusCode.NOT_FOUND, "no model named 'no_such_model'"),
        (predict_request("digits_linear", label="canary", pixels=np.zeros((1, 64), np.float32)),
         grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: canary"),
        (predict_request("digits_linear", pixels=np.zeros((1, 63), np.float32)),
         grpc.StatusCode.INVALID_ARGUMENT, "shape [1, 63], expected float32[N, 64]"),
        (predict_request("digits_linear", pixels=np.zeros((1, 64), np.complex64)),
         grpc.StatusCode.INVALID_ARGUMENT, "dtype DT_COMPLEX64 is not supported"),
    ],
)
def test_errors_carry_tf_servings_status_codes(prediction, request_, code, message):
    with pytest.raises(grpc.RpcError) as failed:
        prediction.Predict(request_, metadata=MAIN, timeout=60)
    assert failed.value.code() == code
    assert message in failed.value.details()


def test_multi_inference_answers_each_task_as_its_own_call(models_app, prediction):
    request = inference_pb2.MultiInferenceRequest()
    examples(request.input.example_list)
    for signature, method in (("regress", "tensorflow/serving/regress"),
                              ("serving_default", "tensorflow/serving/classify")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "examples", signature
    response = prediction.MultiInference(request, metadata=MODELS, timeout=60)
    regressed, classified = response.results
    assert [r.value for r in regressed.regression_result.regressions] == pytest.approx(
        [1.0 + 2.0 + 2.0, 0.5 - 1.5 + 1.0])
    alone = classification_pb2.ClassificationRequest()
    alone.model_spec.name = "examples"
    examples(alone.input.example_list)
    assert classified.classification_result == prediction.Classify(
        alone, metadata=MODELS, timeout=60).result
    assert [(r.model_spec.name, r.model_spec.signature_name) for r in response.results] == [
        ("examples", "regress"), ("examples", "serving_default")]
    with pytest.raises(grpc.RpcError) as failed:
        prediction.MultiInference(inference_pb2.MultiInferenceRequest(), metadata=MAIN,
                                  timeout=60)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_deadline_sent_as_metadata_reaches_the_ingress(prediction):
    """Serve's proxy passes no gRPC deadline on (gRPC consumes ``grpc-timeout``):
    the client's ``x-request-timeout-seconds`` metadata does, and past it the
    call ends with DEADLINE_EXCEEDED, our words."""
    request = predict_request("digits_linear", pixels=digit_rows())
    with pytest.raises(grpc.RpcError) as failed:
        prediction.Predict(request, metadata=(*MAIN, ("x-request-timeout-seconds", "1e-6")),
                           timeout=60)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "not answered within 1e-06 s (its deadline)" in failed.value.details()
    assert prediction.Predict(request, metadata=(*MAIN, ("x-request-timeout-seconds", "30")),
                              timeout=60).outputs["probabilities"].float_val
