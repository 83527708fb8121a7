"""The example pipeline (examples/digit_reader: locator → crop → digits) on
the cluster, deployed from its own YAML with `serve run`: every protocol's
answer equal to its stages called in this process, its own metadata, each
stage batched on its own replicas, and where the time went per step."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
import ray
import tensorflow as tf
import tritonclient.grpc as grpcclient
import yaml
from PIL import Image
from ray import serve
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from harness.cluster import wait_app_running
from models.build_locator import canvases
from tests.common import CONFIG, READER_CONFIG, locator_model, read_in_process
from tests.integration.conftest import deploy_config

APP = "reader"
PIPELINE = "digit_reader"
METADATA = (("application", APP),)


@pytest.fixture(scope="module")
def reader(base_url: str, tmp_path_factory) -> Iterator[str]:
    """The example's app beside the main one, at /reader; its URL."""
    locator_model()
    config = yaml.safe_load(CONFIG.read_text())
    (app,) = yaml.safe_load(READER_CONFIG.read_text())["applications"]
    app.update(name=APP, route_prefix=f"/{APP}")
    config["applications"].append(app)
    deploy_config(config, tmp_path_factory.mktemp("reader"))
    wait_app_running(APP, 240)
    yield f"{base_url}/{APP}"
    serve.delete(APP)


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Eight canvases ``[8, 40, 40, 1]``, their digits, and the stages' answer."""
    images, _, labels = canvases(8, seed=11)
    images = images[..., None]
    return images, labels, read_in_process(images)


def assert_matches(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(outputs) == ["box", "probabilities"]
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(outputs[name], np.float32), value, atol=1e-5)


def test_tfserving_rest_answers_as_the_stages_in_process(reader: str, sample):
    images, labels, expected = sample
    answer = httpx.post(f"{reader}/v1/models/{PIPELINE}:predict",
                        json={"inputs": {"image": images.tolist()}}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert_matches(answer.json()["outputs"], expected)
    assert (expected["probabilities"].argmax(1) == labels).mean() >= 0.75  # it reads digits


def test_v2_rest_and_grpc_answer_as_the_stages_in_process(reader: str, grpc_address: str,
                                                           sample):
    images, _, expected = sample
    body = {"inputs": [{"name": "image", "shape": list(images.shape), "datatype": "FP32",
                        "data": images.ravel().tolist()}]}
    answer = httpx.post(f"{reader}/v2/models/{PIPELINE}/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert_matches({o["name"]: np.reshape(o["data"], o["shape"])
                    for o in answer.json()["outputs"]}, expected)

    client = grpcclient.InferenceServerClient(grpc_address)
    tensor = grpcclient.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    result = client.infer(PIPELINE, [tensor], headers=dict(METADATA))
    assert_matches({n: result.as_numpy(n) for n in ("box", "probabilities")}, expected)


def test_tfserving_grpc_answers_as_the_stages_in_process(grpc_address: str, reader: str,
                                                         sample):
    images, _, expected = sample
    request = predict_pb2.PredictRequest()
    request.model_spec.name = PIPELINE
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
    with grpc.insecure_channel(grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, metadata=METADATA, timeout=60)
    assert response.model_spec.version.value == 1
    assert_matches({n: tf.make_ndarray(t) for n, t in response.outputs.items()}, expected)


def png(canvas: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray((canvas[..., 0] * 255).round().astype(np.uint8), mode="L").save(out, "PNG")
    return out.getvalue()


def test_images_read_through_the_pipeline_with_the_digits_labels(reader: str, sample):
    images, labels, _ = sample
    files = [("image", (f"{i}.png", png(c), "image/png")) for i, c in enumerate(images)]
    answer = httpx.post(f"{reader}/models/{PIPELINE}/predict", files=files, timeout=60)
    assert answer.status_code == 200, answer.text
    read = [p["top_k"][0]["label"] for p in answer.json()["predictions"]]
    assert np.mean(np.array(read) == labels.astype(str)) >= 0.75
    b64 = httpx.post(f"{reader}/v1/models/{PIPELINE}:predict", timeout=60, json={
        "instances": [{"b64": base64.b64encode(png(images[0])).decode()}]})
    assert b64.status_code == 200, b64.text


def test_metadata_is_the_pipelines_own(reader: str):
    meta = httpx.get(f"{reader}/v1/models/{PIPELINE}/metadata", timeout=30).json()
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sorted(signature["inputs"]) == ["image"]
    assert sorted(signature["outputs"]) == ["box", "probabilities"]
    v2 = httpx.get(f"{reader}/v2/models/{PIPELINE}", timeout=30).json()
    assert [i["shape"] for i in v2["inputs"]] == [[-1, 40, 40, 1]]
    status = httpx.get(f"{reader}/v1/models/{PIPELINE}", timeout=30).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    assert httpx.get(f"{reader}/v2/models/{PIPELINE}/ready", timeout=30).status_code == 200


def test_each_stage_batches_on_its_own_replicas(reader: str, sample):
    images, _, expected = sample
    before = {m: _steps(m) for m in ("locator", "digits")}
    url = f"{reader}/v1/models/{PIPELINE}:predict"

    def one(i: int) -> np.ndarray:
        answer = httpx.post(url, json={"inputs": {"image": images[i % 8:i % 8 + 1].tolist()}},
                            timeout=60)
        assert answer.status_code == 200, answer.text
        return np.asarray(answer.json()["outputs"]["probabilities"])

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(96)))
    for i, probabilities in enumerate(answers):
        np.testing.assert_allclose(probabilities[0], expected["probabilities"][i % 8],
                                   atol=1e-5)
    for model, step in (("locator", "locate"), ("digits", "read")):
        stats = _steps(model)[f"{PIPELINE}/{step}"]
        calls = stats["calls"] - before[model].get(f"{PIPELINE}/{step}", {}).get("calls", 0)
        requests = stats["requests"] - before[model].get(f"{PIPELINE}/{step}", {}).get(
            "requests", 0)
        assert requests == 96
        assert calls < requests  # requests shared calls at this stage
        assert stats["model_s"] > 0 and stats["feed_s"] >= 0


def _steps(model: str) -> dict:
    return serve.get_deployment_handle(model, APP).stats.remote().result()["pipeline_steps"]


def test_wrong_inputs_are_the_clients_400(reader: str):
    answer = httpx.post(f"{reader}/v1/models/{PIPELINE}:predict",
                        json={"instances": [[0.0] * 64]}, timeout=30)
    assert answer.status_code == 400
    assert "image" in answer.json()["error"]


def test_handle_callers_get_the_pipeline_too(reader: str, sample):
    images, _, expected = sample
    answer = serve.get_app_handle(APP).predict.remote(
        images, scores=True, model=PIPELINE).result()
    scores = np.array([p["scores"] for p in answer["predictions"]])
    np.testing.assert_allclose(scores, expected["probabilities"], atol=1e-5)
    # The caller's own object, by input name: read by each step that takes it.
    by_ref = serve.get_app_handle(APP).predict.remote(
        {"image": ray.put(images)}, scores=True, model=PIPELINE).result()
    assert [p["scores"] for p in by_ref["predictions"]] == \
        [p["scores"] for p in answer["predictions"]]

