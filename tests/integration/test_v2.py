"""KServe V2 / Open Inference Protocol, spoken by NVIDIA's own clients
(``tritonclient.http`` with JSON and binary tensors, ``tritonclient.grpc``)
and by hand for the binary extension's edge cases."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from ray import serve
from tritonclient.utils import InferenceServerException

from harness.cluster import wait_until
from tests.common import APP_NAME, SAMPLES, sample_label


@pytest.fixture(scope="module")
def http_client(base_url: str) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(base_url.removeprefix("http://"))


# Serve's gRPC proxy routes to the only app, or else by the "application"
# metadata; other test modules run apps beside this one.
APP = {"application": APP_NAME}


@pytest.fixture(scope="module")
def grpc_client(grpc_address: str) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(grpc_address)


def digit_rows() -> tuple[np.ndarray, np.ndarray]:
    """Held-out-like rows for the tensor model: sklearn's 8x8 digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data[:20].astype(np.float32), digits.target[:20]


def encoded_samples() -> tuple[np.ndarray, list[str]]:
    blobs = np.array([p.read_bytes() for p in SAMPLES], dtype=object)
    return blobs, [sample_label(p) for p in SAMPLES]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http_infers_a_tensor_model(http_client, binary: bool):
    rows, labels = digit_rows()
    inp = httpclient.InferInput("pixels", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows, binary_data=binary)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
    result = http_client.infer("digits_linear", [inp], outputs=[out], request_id="r-1")
    probs = result.as_numpy("probabilities")
    assert probs.shape == (20, 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert (probs.argmax(axis=1) == labels).mean() >= 0.9
    response = result.get_response()
    assert response["model_name"] == "digits_linear" and response["id"] == "r-1"
    assert response["model_version"] == "1"


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_http_compressed_requests(http_client, algorithm: str):
    rows, labels = digit_rows()
    inp = httpclient.InferInput("pixels", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows, binary_data=True)
    result = http_client.infer("digits_linear", [inp],
                               request_compression_algorithm=algorithm)
    assert (result.as_numpy("probabilities").argmax(axis=1) == labels).mean() >= 0.9


def test_tritonclient_http_sends_images_as_bytes(http_client):
    blobs, labels = encoded_samples()
    inp = httpclient.InferInput("image", [len(blobs)], "BYTES")
    inp.set_data_from_numpy(blobs, binary_data=True)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=True,
                                               class_count=3)]
    result = http_client.infer("digits", [inp], outputs=outputs)
    top = result.as_numpy("probabilities")  # classification: "score:index:label"
    assert top.shape == (len(blobs), 3)
    predicted = [row[0].decode().split(":")[2] for row in top]
    assert sum(p == t for p, t in zip(predicted, labels, strict=True)) >= 9


def test_tritonclient_http_metadata_and_health(http_client):
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert http_client.is_model_ready("digits") and http_client.is_model_ready("digits", "1")
    assert not http_client.is_model_ready("no_such_model")
    server = http_client.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"]
    meta = http_client.get_model_metadata("digits")
    assert meta["name"] == "digits" and meta["versions"] == ["1"]
    assert meta["inputs"][0] == {"name": "image", "datatype": "FP32", "shape": [-1, 28, 28, 1],
                                 "parameters": {"also_accepts": "BYTES [N] encoded images"}}
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32",
                                "shape": [-1, 10]}]
    config = http_client.get_model_config("digits")  # Triton's, as its image client reads it
    assert (config["max_batch_size"], config["input"][0]["format"]) == (256, "FORMAT_NHWC")


@pytest.mark.parametrize(
    ("model", "inputs", "match"),
    [
        ("no_such_model", [("pixels", (1, 64), "FP32")], "no model named 'no_such_model'"),
        ("digits_linear", [("wrong", (1, 64), "FP32")], "missing 'pixels'; unknown 'wrong'"),
        ("digits_linear", [("pixels", (1, 63), "FP32")], r"shape \[1, 63\]"),
        ("digits_linear", [("pixels", (1, 64), "BYTES")], "takes tensors"),
    ],
)
def test_tritonclient_http_errors_name_the_problem(http_client, model, inputs, match):
    infer_inputs = []
    for name, shape, datatype in inputs:
        inp = httpclient.InferInput(name, list(shape), datatype)
        data = (np.full(shape, b"x", dtype=object) if datatype == "BYTES"
                else np.zeros(shape, np.float32))
        inp.set_data_from_numpy(data)
        infer_inputs.append(inp)
    with pytest.raises(InferenceServerException, match=match):
        http_client.infer(model, infer_inputs)


def test_tritonclient_grpc_needs_no_metadata_with_one_app(grpc_client):
    # Apps of earlier modules go while later ones start: await the last, and
    # the proxy's routes following (a moment after `serve status`).
    def alone() -> bool:
        try:
            return (set(serve.status().applications) == {APP_NAME}
                    and grpc_client.is_server_live())
        except InferenceServerException:  # another app is still routed to
            return False

    wait_until(alone, 120, "the other apps to go")
    assert grpc_client.is_server_live() and grpc_client.is_model_ready("digits")


def test_tritonclient_grpc_infers_tensors_and_images(grpc_client):
    assert grpc_client.is_server_live(APP) and grpc_client.is_server_ready(APP)
    assert grpc_client.is_model_ready("digits_linear", headers=APP)
    # As over HTTP, and as Triton answers: an unknown model is not ready, not an error.
    assert not grpc_client.is_model_ready("no_such_model", headers=APP)
    config = grpc_client.get_model_config("digits_linear", headers=APP, as_json=True)
    assert config["config"]["max_batch_size"] == 256  # perf_analyzer reads it
    assert config["config"]["input"][0]["dims"] == ["64"]  # (int64 in protobuf's JSON)
    with pytest.raises(InferenceServerException) as refused:  # not an INTERNAL error
        grpc_client.get_inference_statistics("digits_linear", headers=APP)
    assert refused.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "ModelStatistics is not offered here" in refused.value.message()
    meta = grpc_client.get_model_metadata("digits_linear", headers=APP, as_json=True)
    assert meta["inputs"][0]["name"] == "pixels" and meta["platform"] == "tensorflow_savedmodel"

    rows, labels = digit_rows()
    inp = grpcclient.InferInput("pixels", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    result = grpc_client.infer("digits_linear", [inp], request_id="g-1", headers=APP)
    probs = result.as_numpy("probabilities")
    assert probs.shape == (20, 10) and (probs.argmax(axis=1) == labels).mean() >= 0.9
    assert result.get_response().id == "g-1"

    blobs, image_labels = encoded_samples()
    img = grpcclient.InferInput("image", [len(blobs)], "BYTES")
    img.set_data_from_numpy(blobs)
    out = grpcclient.InferRequestedOutput("probabilities", class_count=1)
    top = grpc_client.infer("digits", [img], outputs=[out], headers=APP).as_numpy(
        "probabilities")
    predicted = [row[0].decode().split(":")[2] for row in top]
    assert sum(p == t for p, t in zip(predicted, image_labels, strict=True)) >= 9


def test_grpc_through_serves_own_proxy(base_url):
    """HAProxy sends gRPC to Serve's fallback proxy while no ingress replica is
    registered with it (at start-up, during redeploys). That proxy pickles each
    request for the replica: the generated messages must survive it."""
    port = os.environ["RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"]  # chosen by start_cluster
    fallback = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    rows, labels = digit_rows()
    inp = grpcclient.InferInput("pixels", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    probs = fallback.infer("digits_linear", [inp], headers=APP).as_numpy("probabilities")
    assert (probs.argmax(axis=1) == labels).mean() >= 0.9


def test_tritonclient_grpc_errors_carry_status_codes(grpc_client):
    inp = grpcclient.InferInput("pixels", [1, 63], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 63), np.float32))
    with pytest.raises(InferenceServerException) as bad:
        grpc_client.infer("digits_linear", [inp], headers=APP)
    assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "shape [1, 63]" in bad.value.message()
    with pytest.raises(InferenceServerException) as missing:
        grpc_client.get_model_metadata("no_such_model", headers=APP)
    assert missing.value.status() == "StatusCode.NOT_FOUND"


def test_grpc_messages_over_the_cap_are_refused_by_the_transport(grpc_client):
    """RAY_SERVE_GRPC_MAX_MESSAGE_SIZE (configs/server.env): 20 MB is refused
    before it reaches the app, as RESOURCE_EXHAUSTED."""
    big = np.zeros((1, 5_000_000), np.float32)
    inp = grpcclient.InferInput("pixels", list(big.shape), "FP32")
    inp.set_data_from_numpy(big)
    with pytest.raises(InferenceServerException) as refused:
        grpc_client.infer("digits_linear", [inp], headers=APP)
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    rows, _ = digit_rows()  # and the next one is served
    inp = grpcclient.InferInput("pixels", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    assert grpc_client.infer("digits_linear", [inp], headers=APP).as_numpy(
        "probabilities").shape == (20, 10)
