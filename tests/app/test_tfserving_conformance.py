"""TF Serving's own server test (``tensorflow_model_server_test.py``) with its
own test models and golden answers (``../shared/tfserving-testdata``, laid out
as TF Serving lays them out: version directories ``00000123``), in process:
the REST routes through the HTTP layer, the gRPC methods as Serve's gRPC
proxy calls them with TF Serving's own request messages. The models TF
Serving's test builds at run time (``tf.saved_model.save`` with unknown
ranks, several signatures) are built here the same way.

Left out: TFLite, Unix sockets, the profiler, session bundles, gRPC channel
arguments, model config files and Prometheus (the command-line server's),
and the Keras ``Sequential`` case (Keras 3 names a saved Sequential's
tensors ``inputs``/``output_0``, not ``x``/``y`` as that test expects).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from starlette.testclient import TestClient
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from deployments.config import AppArgs
from deployments.ingress.asgi import build_asgi
from deployments.metrics import IngressMetrics
from deployments.versions import Routing
from harness.inprocess import in_process_plane
from tests.app.test_tfserving_grpc import App, Service
from tests.common import TFSERVING_TESTDATA

if not TFSERVING_TESTDATA.is_dir():
    pytest.skip(f"TF Serving's test data is not at {TFSERVING_TESTDATA}",
                allow_module_level=True)

HALF_PLUS_TWO = TFSERVING_TESTDATA / "saved_model_half_plus_two_cpu"
HALF_PLUS_TWO_TF2 = TFSERVING_TESTDATA / "saved_model_half_plus_two_tf2_cpu"
HALF_PLUS_THREE = TFSERVING_TESTDATA / "saved_model_half_plus_three"
TWO_VERSIONS = TFSERVING_TESTDATA / "saved_model_half_plus_two_2_versions"
VERSION = 123  # every test model's version directory is 00000123
LARGEST = 2**63 - 1  # the largest version TF Serving reads (int64)


def build_unknown_rank(base: Path) -> Path:
    """TF Serving's ``test_tf_saved_model_save``: ``y = 3 * 2 * x`` over an
    input of unknown rank."""
    root = tf.train.Checkpoint()
    root.v1, root.v2 = tf.Variable(3.0), tf.Variable(2.0)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    tf.saved_model.save(root, str(base / "00000123"),
                        root.f.get_concrete_function(tf.TensorSpec(None, tf.float32)))
    return base


def build_two_signatures(base: Path) -> Path:
    """TF Serving's ``test_tf_saved_model_save_multiple_signatures``: scalar
    answers 1.0 (``serving_default``) and 2.0 (``custom_signature_key``)."""
    root = tf.train.Checkpoint()
    root.f = tf.function(lambda x: {"y": 1.0}, input_signature=[tf.TensorSpec(None, tf.float32)])
    root.g = tf.function(lambda x: {"y": 2.0}, input_signature=[tf.TensorSpec(None, tf.float32)])
    tf.saved_model.save(root, str(base / "00000123"),
                        signatures={"serving_default": root.f, "custom_signature_key": root.g})
    return base


class Server(App):
    """The app in process: gRPC through the ingress's TF Serving mixin
    (``call``, ``fails``), REST through a test client."""

    def rest(self, path: str, body: Any = None) -> Any:
        response = (self.http.get(path) if body is None
                    else self.http.post(path, content=json.dumps(body)))
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    built = tmp_path_factory.mktemp("tfserving")
    shutil.copytree(HALF_PLUS_TWO / "00000123", built / "largest" / str(LARGEST))
    models = [
        {"name": "default", "path": str(HALF_PLUS_TWO)},
        {"name": "half_plus_three", "path": str(HALF_PLUS_THREE)},
        {"name": "tf2", "path": str(HALF_PLUS_TWO_TF2)},
        {"name": "saved_model_half_plus_two_2_versions", "path": str(TWO_VERSIONS),
         "version_policy": "all"},
        {"name": "unknown_rank", "path": str(build_unknown_rank(built / "unknown_rank"))},
        {"name": "two_signatures", "path": str(build_two_signatures(built / "two"))},
        {"name": "largest", "path": str(built / "largest")},
    ]
    args = AppArgs.model_validate({"models": models})
    metrics = IngressMetrics([m["name"] for m in models])
    plane = in_process_plane(args, metrics, {"default": Routing(labels={"stable": 123})})
    with TestClient(build_asgi(plane, args.limits, metrics, args.top_k),
                    raise_server_exceptions=False) as http:
        yield Server(Service(plane, args, metrics), http, [])


def sorted_object(value: Any) -> Any:
    """TF Serving's test's ``SortedObject``: dicts and lists sorted, recursively."""
    if isinstance(value, dict):
        return sorted((k, sorted_object(v)) for k, v in value.items())
    if isinstance(value, list):
        return sorted(sorted_object(v) for v in value)
    return value


def predict_request(model: str = "default", signature: str = "", output_filter: bool = True,
                    batch_input: bool = False) -> predict_pb2.PredictRequest:
    """TF Serving's ``VerifyPredictRequest``: ``x`` = 2.0 as ``float_val``."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["x"].dtype = tf.float32.as_datatype_enum
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if batch_input:
        request.inputs["x"].tensor_shape.dim.add().size = 1
    if output_filter:
        request.output_filter.append("y")
    return request


def verify_predict(server: Server, expected: float, model: str = "default",
                   signature: str = "", **options: bool) -> None:
    result = server.call("Predict", predict_request(model, signature, **options))
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == tf.float32.as_datatype_enum
    assert len(result.outputs["y"].float_val) == 1
    assert result.outputs["y"].float_val[0] == expected
    assert (result.model_spec.name, result.model_spec.signature_name,
            result.model_spec.version.value) == (model, signature or "serving_default", VERSION)


def example_input(message: Any) -> Any:
    example = message.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.extend([2.0])
    return message


# -- gRPC ---------------------------------------------------------------------


@pytest.mark.parametrize("output_filter", [True, False])
@pytest.mark.parametrize(("model", "expected"), [("default", 3.0), ("half_plus_three", 4.0),
                                                 ("tf2", 3.0)])
def test_predict(server: Server, model: str, expected: float, output_filter: bool):
    verify_predict(server, expected, model, output_filter=output_filter)


def test_predict_a_batch_shaped_input(server: Server):
    verify_predict(server, 3.0, batch_input=True)


def test_predict_an_input_of_unknown_rank(server: Server):
    verify_predict(server, 12.0, "unknown_rank", output_filter=False)


def test_predict_with_several_signatures(server: Server):
    verify_predict(server, 2.0, "two_signatures", "custom_signature_key")
    verify_predict(server, 1.0, "two_signatures")


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_classify(server: Server, model: str):
    request = example_input(classification_pb2.ClassificationRequest())
    request.model_spec.name, request.model_spec.signature_name = model, "classify_x_to_y"
    result = server.call("Classify", request)
    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    assert (result.model_spec.name, result.model_spec.signature_name,
            result.model_spec.version.value) == (model, "classify_x_to_y", VERSION)


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_regress(server: Server, model: str):
    request = example_input(regression_pb2.RegressionRequest())
    request.model_spec.name, request.model_spec.signature_name = model, "regress_x_to_y"
    result = server.call("Regress", request)
    assert len(result.result.regressions) == 1
    assert result.result.regressions[0].value == 3.0
    assert (result.model_spec.name, result.model_spec.signature_name,
            result.model_spec.version.value) == (model, "regress_x_to_y", VERSION)


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_multi_inference(server: Server, model: str):
    request = example_input(inference_pb2.MultiInferenceRequest())
    for signature, method in (("regress_x_to_y", "tensorflow/serving/regress"),
                              ("classify_x_to_y", "tensorflow/serving/classify")):
        task = request.tasks.add()
        task.model_spec.name, task.model_spec.signature_name = model, signature
        task.method_name = method
    result = server.call("MultiInference", request)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for task, answer in zip(request.tasks, result.results, strict=True):
        assert (answer.model_spec.name, answer.model_spec.signature_name,
                answer.model_spec.version.value) == (model, task.model_spec.signature_name,
                                                     VERSION)


def test_multi_inference_refuses_what_tf_serving_refuses(server: Server):
    request = example_input(inference_pb2.MultiInferenceRequest())
    for name, signature, method in (("default", "regress_x_to_y", "tensorflow/serving/regress"),
                                    ("default", "regress_x_to_y", "tensorflow/serving/regress")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = name, signature
    assert server.fails("MultiInference", request).details == \
        "Duplicate evaluation of signature: regress_x_to_y"
    request.tasks[1].model_spec.signature_name = "classify_x_to_y"
    request.tasks[1].method_name = "tensorflow/serving/predict"
    assert server.fails("MultiInference", request).details == \
        "Unsupported signature method_name: tensorflow/serving/predict"
    request.tasks[1].model_spec.name = "tf2"
    assert server.fails("MultiInference", request).details == \
        "All ModelSpecs in a MultiInferenceRequest must access the same model name."


def test_get_model_status(server: Server):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    result = server.call("GetModelStatus", request)
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == VERSION
    assert result.model_version_status[0].status.error_code == 0


def test_get_model_metadata(server: Server):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "default"
    result = server.call("GetModelMetadata", request)
    assert (result.model_spec.name, result.model_spec.version.value) == ("default", VERSION)
    assert len(result.metadata) == 1 and "signature_def" in result.metadata
    defs = get_model_metadata_pb2.SignatureDefMap()
    result.metadata["signature_def"].Unpack(defs)
    assert sorted(defs.signature_def) == ["classify_x_to_y", "regress_x2_to_y3",
                                          "regress_x_to_y", "regress_x_to_y2",
                                          "serving_default"]


def test_a_missing_model_says_servable_as_tf_servings_readiness_wait_expects(server: Server):
    context = server.fails("Predict", predict_request("intentionally_missing_model"))
    assert "Servable" in context.details and context.code.name == "NOT_FOUND"


# -- REST ---------------------------------------------------------------------


def test_predict_rest(server: Server):
    assert server.rest("/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]}) == \
        {"predictions": [3.0, 3.5, 4.0]}


def test_predict_columnar_rest(server: Server):
    assert server.rest("/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]}) == \
        {"outputs": [3.0, 3.5, 4.0]}


def test_the_docker_tutorial(server: Server):
    assert server.rest("/v1/models/default:predict", {"instances": [1.0, 2.0, 5.0]}) == \
        {"predictions": [2.5, 3.0, 4.5]}
    assert server.rest("/v1/models/default:predict",
                       {"instances": [[1.0, 2.0], [3.0, 4.0]]}) == \
        {"predictions": [[2.5, 3.0], [3.5, 4.0]]}


def test_classify_rest(server: Server):
    assert server.rest("/v1/models/default:classify",
                       {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}) == \
        {"results": [[["", 3.0]]]}


def test_regress_rest(server: Server):
    assert server.rest("/v1/models/default:regress",
                       {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}) == \
        {"results": [3.0]}


def test_get_status_rest(server: Server):
    assert server.rest("/v1/models/default") == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}}]}


def test_get_model_metadata_rest(server: Server):
    golden = json.loads((TFSERVING_TESTDATA / "half_plus_two_model_metadata.json").read_text())
    assert sorted_object(server.rest("/v1/models/default/metadata")) == sorted_object(golden)


def test_two_versions_metadata_rest(server: Server):
    golden = json.loads(
        (TFSERVING_TESTDATA / "saved_model_half_plus_two_2_versions_metadata.json").read_text())
    answer = server.rest("/v1/models/saved_model_half_plus_two_2_versions/versions/123/metadata")
    assert sorted_object(answer) == sorted_object(golden)


def test_tf2_metadata_rest(server: Server):
    """The golden file comes from another export of the TF2 model than the
    one in the test data, whose predict signature carries a default value for
    ``x``; it also predates SignatureDef's ``defaults`` field. So the
    ``defaults`` (printed from the file as they are) are left out of the
    comparison; everything else is TF Serving's answer."""
    golden = json.loads((TFSERVING_TESTDATA /
                         "saved_model_half_plus_two_tf2_2_versions_metadata.json").read_text())
    golden["model_spec"]["name"] = "tf2"
    answer = server.rest("/v1/models/tf2/metadata")
    for document in (golden, answer):
        for definition in document["metadata"]["signature_def"]["signature_def"].values():
            definition.pop("defaults", None)
    assert sorted_object(answer) == sorted_object(golden)


def test_version_labels_rest_and_grpc(server: Server):
    assert server.rest("/v1/models/default/labels/stable:predict", {"instances": [2.0]}) == \
        {"predictions": [3.0]}
    request = predict_request()
    request.model_spec.version_label = "stable"
    assert server.call("Predict", request).outputs["y"].float_val[0] == 3.0
    unknown = server.http.post("/v1/models/default/labels/beta:predict",
                               content=json.dumps({"instances": [2.0]}))
    assert unknown.status_code == 400
    assert unknown.json()["error"].startswith("Unrecognized servable version label: beta")


@pytest.mark.parametrize(("path", "body", "status", "error"), [
    ("/v1/models/default:predict", {"signature_name": "nope", "instances": [2.0]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("/v1/models/nope:predict", {"instances": [2.0]}, 404,
     "Servable not found for request: Latest(nope)"),
    ("/v1/models/default/versions/7:predict", {"instances": [2.0]}, 404,
     "Servable not found for request: Specific(default, 7)"),
    ("/v1/models/default:predict", {"instances": ["a"]}, 400, "must hold only numbers"),
    ("/v1/models/default:regress", {"signature_name": "classify_x_to_y",
                                    "examples": [{"x": 2.0}]}, 400,
     "Expected one output Tensor named 'outputs'"),
])
def test_errors_rest(server: Server, path: str, body: Any, status: int, error: str):
    response = server.http.post(path, content=json.dumps(body))
    assert response.status_code == status
    assert list(response.json()) == ["error"] and error in response.json()["error"]


def test_a_scalar_output_answers_in_the_columnar_format_only(server: Server):
    assert server.rest("/v1/models/two_signatures:predict", {"inputs": 2.0}) == {"outputs": 1.0}
    response = server.http.post("/v1/models/two_signatures:predict",
                                content=json.dumps({"instances": [2.0]}))
    assert response.status_code == 400
    assert response.json()["error"].startswith("Tensor name: y has no shape information")


def test_other_signatures_on_v2(server: Server):
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [2.0]}],
            "parameters": {"signature_name": "custom_signature_key"}}
    answer = server.http.post("/v2/models/two_signatures/infer", json=body).json()
    assert answer["outputs"][0]["data"] == [2.0]
    body["parameters"] = {}
    assert server.http.post("/v2/models/two_signatures/infer",
                            json=body).json()["outputs"][0]["data"] == [1.0]


def test_requests_run_alone_where_the_graph_decides_the_shape(server: Server):
    """Rows of [N, 1] join a batch; a [3] tensor fed to x: [-1, 1] runs alone."""
    rows = np.array([[2.0], [4.0]], np.float32)
    answer = server.rest("/v1/models/default:predict", {"inputs": rows.tolist()})
    assert answer == {"outputs": [[3.0], [4.0]]}


def test_the_largest_version_is_reachable_on_every_route(server: Server):
    path = f"/v1/models/largest/versions/{LARGEST}"
    assert server.rest(f"{path}:predict", {"instances": [2.0]}) == {"predictions": [3.0]}
    assert server.rest(path)["model_version_status"][0]["version"] == str(LARGEST)
    assert server.rest(f"{path}/metadata")["model_spec"]["version"] == str(LARGEST)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [2.0]}]}
    v2 = server.http.post(f"/v2/models/largest/versions/{LARGEST}/infer", json=body).json()
    assert v2["model_version"] == str(LARGEST) and v2["outputs"][0]["data"] == [3.0]
    request = predict_request("largest")
    request.model_spec.version.value = LARGEST
    assert server.call("Predict", request).model_spec.version.value == LARGEST
