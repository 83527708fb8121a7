"""TensorFlow Serving's REST API, with requests shaped as in its documentation:
row ("instances") and columnar ("inputs") formats, named and bare inputs,
binary values as {"b64": ...}, status and metadata, and its error body."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.common import SAMPLES, sample_label


def rows(n: int = 5) -> tuple[list[list[float]], list[int]]:
    digits = load_digits()
    return digits.data[:n].tolist(), digits.target[:n].tolist()


def argmax(predictions: list) -> list[int]:
    return np.asarray(predictions).argmax(axis=1).tolist()


def test_row_format_bare_and_named(client: httpx.Client):
    data, labels = rows()
    for instances in (data, [{"pixels": r} for r in data]):
        r = client.post("/v1/models/digits_linear:predict",
                        json={"signature_name": "serving_default", "instances": instances})
        assert r.status_code == 200, r.text
        (key,) = r.json()  # a single output comes bare: a list of per-row scores
        assert key == "predictions" and argmax(r.json()["predictions"]) == labels


def test_columnar_format_bare_and_named(client: httpx.Client):
    data, labels = rows()
    for inputs in (data, {"pixels": data}):
        r = client.post("/v1/models/digits_linear/versions/1:predict", json={"inputs": inputs})
        assert r.status_code == 200, r.text
        assert list(r.json()) == ["outputs"] and argmax(r.json()["outputs"]) == labels


def test_b64_images_go_through_the_preprocessor(client: httpx.Client):
    encoded = [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in SAMPLES]
    r = client.post("/v1/models/digits:predict", json={"instances": encoded})
    assert r.status_code == 200, r.text
    predicted = [str(i) for i in argmax(r.json()["predictions"])]
    assert sum(p == sample_label(s) for p, s in zip(predicted, SAMPLES, strict=True)) >= 9
    named = client.post("/v1/models/digits:predict",
                        json={"inputs": {"image": encoded[:2]}})
    assert named.status_code == 200 and len(named.json()["outputs"]) == 2


def test_status_and_metadata(client: httpx.Client):
    status = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                        "status": {"error_code": "OK", "error_message": ""}}]}
    assert client.get("/v1/models/digits").json() == status
    assert client.get("/v1/models/digits/versions/1").json() == status
    meta = client.get("/v1/models/digits/metadata").json()
    assert meta["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    image = signature["inputs"]["image"]
    assert image["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in image["tensor_shape"]["dim"]] == ["-1", "28", "28", "1"]
    assert client.get("/v1/models/digits/versions/1/metadata").json() == meta


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/v1/models/nope", None, 404, "no model named 'nope'"),
        ("GET", "/v1/models/digits/versions/9", None, 404, "has no version '9'"),
        ("POST", "/v1/models/digits/versions/x:predict", {"instances": [[0]]}, 404,
         "has no version 'x'"),
        ("POST", "/v1/models/digits_linear:predict", {"instances": [[0] * 64], "inputs": []},
         400, 'exactly one of "instances"'),
        ("POST", "/v1/models/digits_linear:predict", {"instances": []}, 400,
         '"instances" must be a non-empty list'),
        ("POST", "/v1/models/digits_linear:predict", {"instances": [[0] * 64, [0] * 3]}, 400,
         "ragged"),
        ("POST", "/v1/models/digits_linear:predict", {"instances": [[0] * 63]}, 400,
         "shape [1, 63]"),
        ("POST", "/v1/models/digits_linear:predict", {"instances": [{"x": [0] * 64}]}, 400,
         "names inputs the model does not take (missing 'pixels'; unknown 'x')"),
        ("POST", "/v1/models/digits_linear:predict",
         {"signature_name": "other", "instances": [[0] * 64]}, 400,
         'Serving signature name: "other" not found in signature def'),
        ("POST", "/v1/models/digits:predict", {"instances": [{"b64": "***"}]}, 400,
         "not valid base64"),
        ("POST", "/v1/models/digits_linear:predict", {"instances": [{"b64": "AAAA"}]}, 400,
         "takes tensors"),
        ("POST", "/v1/models/digits:predict", {"instances": [{"b64": "AAAA"}]}, 400,
         "cannot decode image"),
        ("POST", "/v1/models/digits_linear:classify", {"examples": []}, 400,
         "not a classify signature (it takes no serialized tf.Example protos)"),
        ("POST", "/v1/models/nope:regress", {"examples": []}, 404, "no model named 'nope'"),
    ],
)
def test_errors_use_tf_servings_body(client: httpx.Client, method, path, body, status, message):
    r = client.request(method, path, json=body)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and message in r.json()["error"]
