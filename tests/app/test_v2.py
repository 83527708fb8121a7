"""KServe V2 over HTTP by hand: the binary tensor data extension's framing and
its inconsistent sizes, JSON errors and unknown versions. (NVIDIA's own
clients, HTTP and gRPC, speak to the real server in the cluster tier.)"""

from __future__ import annotations

import json
import re

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits


def digit_rows() -> np.ndarray:
    """Rows for the tensor model: sklearn's 8x8 digits."""
    return load_digits().data[:20].astype(np.float32)


def binary_request(header: dict, blobs: list[bytes], length: int | None = None):
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length":
                                    str(len(head) if length is None else length)}


def test_binary_extension_by_hand(client: httpx.Client):
    rows = digit_rows()
    header = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": list(rows.shape),
                          "parameters": {"binary_data_size": rows.nbytes}}],
              "parameters": {"binary_data_output": True}}
    body, headers = binary_request(header, [rows.tobytes()])
    r = client.post("/v2/models/digits_linear/versions/1/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    length = int(r.headers["Inference-Header-Content-Length"])
    head = json.loads(r.content[:length])
    (out,) = head["outputs"]
    assert out["parameters"]["binary_data_size"] == 20 * 10 * 4
    probs = np.frombuffer(r.content[length:], "<f4").reshape(out["shape"])
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)


@pytest.mark.parametrize(
    ("size", "blob", "length", "match"),
    [
        (256, b"\0" * 100, None, "runs past the end of the body"),
        (256, b"\0" * 300, None, "carries 300 bytes of binary data"),
        (100, b"\0" * 100, None, "100 bytes of data, but shape \\[1, 64\\]"),
        (256, b"\0" * 256, 10**6, "Inference-Header-Content-Length is 1000000"),
        (256, b"\0" * 256, 5, "malformed JSON"),
    ],
)
def test_binary_extension_refuses_inconsistent_sizes(client, size, blob, length, match):
    header = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                          "parameters": {"binary_data_size": size}}]}
    body, headers = binary_request(header, [blob], length)
    r = client.post("/v2/models/digits_linear/infer", content=body, headers=headers)
    assert r.status_code == 400 and re.search(match, r.json()["error"]), r.text


def test_v2_json_errors_and_unknown_versions(client: httpx.Client):
    r = client.post("/v2/models/digits_linear/versions/7/infer",
                    json={"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                                      "data": [0] * 64}]})
    assert r.status_code == 404 and "has no version '7'" in r.json()["error"]
    r = client.post("/v2/models/digits_linear/infer",
                    json={"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                                      "data": [0] * 63}]})
    assert r.status_code == 400 and "63 elements for shape [1, 64]" in r.json()["error"]
    r = client.get("/v2/models/digits/versions/2")
    assert r.status_code == 404
    assert client.get("/v2/health/live").json() == {"live": True}


def test_tritons_model_config_shows_batching_types_and_dims(client: httpx.Client):
    """What Triton's clients and perf_analyzer read: max_batch_size (the rows
    a request may carry) and each tensor's type and dims past the batch."""
    linear = client.get("/v2/models/digits_linear/config").json()
    assert linear == {
        "name": "digits_linear", "platform": "tensorflow_savedmodel", "backend": "tensorflow",
        "max_batch_size": 256,  # configs/config.yaml's limits.max_rows
        "input": [{"name": "pixels", "data_type": "TYPE_FP32", "dims": [64]}],
        "output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}]}
    (image,) = client.get("/v2/models/digits/versions/1/config").json()["input"]
    assert image == {"name": "image", "data_type": "TYPE_FP32", "dims": [28, 28, 1],
                     "format": "FORMAT_NHWC"}
    assert client.get("/v2/models/nope/config").status_code == 404
