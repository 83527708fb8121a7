"""The example pipeline (examples/digit_reader: locator → crop → digits) on
the cluster, deployed from its own YAML with `serve run`: every protocol's
answer equal to its stages called in this process, its own metadata, each
stage batched on its own replicas, and where the time went per step."""

from __future__ import annotations

import base64
import io
import threading
from collections import Counter
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

from harness.cluster import (
    replica_actor_names,
    replica_stats,
    running_replicas,
    wait_app_running,
    wait_until,
)
from harness.reader import READER_CONFIG, locator_model
from models.build_locator import canvases
from tests.common import CONFIG, TLS, read_in_process
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
    for deployment in app["deployments"][1:]:  # two replicas a stage: one may be killed
        deployment["num_replicas"] = 2
    config["applications"].append(app)
    deploy_config(config, tmp_path_factory.mktemp("reader"))
    wait_app_running(APP, 240)
    yield f"{base_url}/{APP}"
    serve.delete(APP, _blocking=False)  # (goes while the next module starts)


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
                            timeout=60, verify=TLS)
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


def _steps(model: str) -> dict[str, dict[str, float]]:
    """Each step's counters on ``model``'s two replicas, summed."""
    total: dict[str, Counter[str]] = {}
    for stats in replica_stats(APP, model, 2).values():
        for step, counters in stats["pipeline_steps"].items():
            total.setdefault(step, Counter()).update(counters)
    return {step: dict(counters) for step, counters in total.items()}


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



@pytest.mark.parametrize("model", ["locator", "digits"])
def test_a_stage_replica_killed_under_load_loses_no_request(reader: str, sample, model: str):
    images, _, _ = sample
    body = {"inputs": {"image": images.tolist()}}
    statuses: Counter[int | str] = Counter()
    stop = threading.Event()

    def post_until_stopped() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                try:
                    answer = client.post(f"{reader}/v1/models/{PIPELINE}:predict", json=body)
                    statuses[answer.status_code] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

    def answered(more: int) -> None:
        target = sum(statuses.values()) + more
        wait_until(lambda: sum(statuses.values()) >= target, 120, f"{more} more answers")

    with ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(post_until_stopped) for _ in range(4)]
        answered(8)
        victim = replica_actor_names(APP, model)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        wait_until(lambda: running_replicas(APP).get(model) == 2
                   and victim not in replica_actor_names(APP, model), 120, "a new replica")
        answered(8)
        stop.set()
        for client in clients:
            client.result()
    assert statuses[200] >= 16
    assert set(statuses) == {200}, statuses  # calls in flight were sent again
