"""TF Serving's own test models on the cluster, the whole path: version
directories as TF Serving names them, warm-up records replayed as each
version loads (a bad one fails its version, the one before keeps serving),
and TF Serving's unmodified gRPC stubs and REST requests answered with the
golden answers of its server test. (Every case of that test runs in process:
``tests/app/test_tfserving_conformance.py``.)"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from ray import serve
from tensorflow_serving.apis import (
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from deployments.app import build_app
from harness.warmup_records import (
    CLASSIFY,
    REGRESS,
    classify_log,
    example,
    examples_input,
    float_tensor,
    multi_log,
    predict_log,
    regress_log,
    write,
)
from tests.common import TFSERVING_TESTDATA

if not TFSERVING_TESTDATA.is_dir():
    pytest.skip(f"TF Serving's test data is not at {TFSERVING_TESTDATA}",
                allow_module_level=True)

APP = "tfserving"
METADATA = (("application", APP),)


def layout(base: Path) -> dict[str, Path]:
    """TF Serving's test models as it lays them out, with warm-up records:
    half_plus_two's 123 replays every kind; a copy of it as version 124
    carries a record the model refuses."""
    default = base / "default"
    shutil.copytree(TFSERVING_TESTDATA / "saved_model_half_plus_two_cpu", default)
    examples = examples_input(example(x=2.0))
    write(default / "00000123", predict_log("", x=float_tensor(2.0)),
          classify_log("classify_x_to_y", examples), regress_log("regress_x_to_y", examples),
          multi_log(examples, ("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY)))
    broken = base / "broken"
    shutil.copytree(default, broken)
    shutil.copytree(default / "00000123", broken / "00000124")
    write(broken / "00000124", predict_log("", x=float_tensor(2.0)),
          classify_log("serving_default", examples))
    return {"default": default, "broken": broken}


@pytest.fixture(scope="module")
def app(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    paths = layout(tmp_path_factory.mktemp("tfserving"))
    serve.run(build_app({"models": [
        {"name": "default", "path": str(paths["default"])},
        {"name": "half_plus_three",
         "path": str(TFSERVING_TESTDATA / "saved_model_half_plus_three")},
        {"name": "tf2", "path": str(TFSERVING_TESTDATA / "saved_model_half_plus_two_tf2_cpu")},
        {"name": "broken", "path": str(paths["broken"])},
    ]}), name=APP, route_prefix=f"/{APP}")
    yield f"{base_url}/{APP}"
    serve.delete(APP, _blocking=False)  # (goes while the next module starts)


@pytest.fixture(scope="module")
def channel(grpc_address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(grpc_address) as c:
        yield c


def predict(channel: grpc.Channel, model: str) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest(output_filter=["y"])
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(float_tensor(2.0))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return stub.Predict(request, metadata=METADATA, timeout=60)


def test_tf_servings_stubs_get_its_golden_answers(app: str, channel: grpc.Channel):
    for model, expected in (("default", 3.0), ("half_plus_three", 4.0), ("tf2", 3.0)):
        result = predict(channel, model)
        assert list(result.outputs["y"].float_val) == [expected]
        assert (result.model_spec.name, result.model_spec.signature_name,
                result.model_spec.version.value) == (model, "serving_default", 123)
    request = examples_input(example(x=2.0))
    multi = inference_pb2.MultiInferenceRequest(input=request, tasks=[
        inference_pb2.InferenceTask(model_spec={"name": "tf2", "signature_name": signature},
                                    method_name=method)
        for signature, method in (("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY))])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    result = stub.MultiInference(multi, metadata=METADATA, timeout=60)
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0


def test_rest_golden_answers(app: str):
    with httpx.Client(base_url=app, timeout=60) as client:
        assert client.post("/v1/models/default:predict",
                           json={"instances": [1.0, 2.0, 5.0]}).json() == \
            {"predictions": [2.5, 3.0, 4.5]}
        assert client.post("/v1/models/default:classify", json={
            "signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}).json() == \
            {"results": [[["", 3.0]]]}
        assert client.get("/v1/models/default").json() == {"model_version_status": [
            {"version": "123", "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}]}


def test_warm_up_records_run_before_a_version_serves(app: str, channel: grpc.Channel):
    stats = serve.get_deployment_handle("default", APP).stats.remote().result()
    assert stats["warmup"]["records"] == 4 and stats["warmup"]["seconds"] > 0
    # 124's second record classifies on a predict signature: 124 fails, 123 serves.
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "broken"
    statuses = {s.version: s for s in stub.GetModelStatus(
        request, metadata=METADATA, timeout=60).model_version_status}
    assert statuses[124].state == get_model_status_pb2.ModelVersionStatus.END
    assert "warmup record 1 (classify, signature 'serving_default') failed" in \
        statuses[124].status.error_message
    assert statuses[123].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert predict(channel, "broken").model_spec.version.value == 123
