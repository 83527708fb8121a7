"""Models whose signatures are not one float image: several named inputs of
numbers and strings, raw text, variable-length sequences, an image beside a
feature vector, and TF Serving's classify/regress over tf.Example. Every
protocol's answer is compared with the SavedModel called in this process on
the same inputs."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from starlette.testclient import TestClient

from deployments.codecs.image import decode_images
from deployments.config import AppArgs
from deployments.types import ImageGeometry
from tests.app.conftest import build_app
from tests.app.test_v2 import binary_request
from tests.common import SAMPLES, signature_models

ENTRIES = [
    {"name": "tabular", "path": "tabular", "labels_path": "tabular/labels.txt",
     "scores_output": "approval"},
    {"name": "text", "path": "text", "labels_path": "text/labels.txt"},
    {"name": "sequence", "path": "sequence"},
    {"name": "photo_meta", "path": "photo_meta", "input": "image",
     "labels_path": "photo_meta/labels.txt"},
    {"name": "examples", "path": "examples"},
    {"name": "examples_regress", "path": "examples", "signature_name": "regress"},
]

AGES = np.array([[30.0], [51.5], [70.0]], np.float32)
CITIES = np.array([[b"lyon"], [b"oslo"], [b"nowhere"]], dtype=object)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    root = signature_models()
    models = [{**entry, "path": str(root / entry["path"]),
               **({"labels_path": str(root / entry["labels_path"])}
                  if "labels_path" in entry else {})} for entry in ENTRIES]
    with TestClient(build_app(AppArgs.model_validate({"models": models})),
                    raise_server_exceptions=False) as c:
        yield c


@cache
def _signature(model: str, signature: str = "serving_default"):
    return tf.saved_model.load(str(signature_models() / model / "1")).signatures[signature]


def reference(model: str, signature: str = "serving_default", **inputs) -> dict:
    """The SavedModel's own answer, called here."""
    return {k: v.numpy() for k, v in _signature(model, signature)(
        **{k: tf.constant(v) for k, v in inputs.items()}).items()}


def post(client: TestClient, path: str, body: dict) -> dict:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_several_inputs_and_outputs_on_every_protocol(client: TestClient):
    expected = reference("tabular", age=AGES, city=CITIES)
    ages, cities = AGES.tolist(), [[c.decode()] for c in CITIES.ravel()]
    rows = post(client, "/v1/models/tabular:predict", {"instances": [
        {"age": a, "city": c} for a, c in zip(ages, cities, strict=True)]})["predictions"]
    columns = post(client, "/v1/models/tabular:predict",
                   {"inputs": {"age": ages, "city": cities}})["outputs"]
    v2_inputs = [{"name": "age", "datatype": "FP32", "shape": [3, 1], "data": ages},
                 {"name": "city", "datatype": "BYTES", "shape": [3, 1], "data": cities}]
    v2 = {o["name"]: o for o in post(client, "/v2/models/tabular/infer",
                                     {"inputs": v2_inputs})["outputs"]}
    lengths = b"".join(len(c).to_bytes(4, "little") + c for c in CITIES.ravel())
    header = {"inputs": [
        {"name": "age", "datatype": "FP32", "shape": [3, 1],
         "parameters": {"binary_data_size": AGES.nbytes}},
        {"name": "city", "datatype": "BYTES", "shape": [3, 1],
         "parameters": {"binary_data_size": len(lengths)}}],
        "outputs": [{"name": "amount"}]}
    body, headers = binary_request(header, [AGES.tobytes(), lengths])
    r = client.post("/v2/models/tabular/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    (binary,) = r.json()["outputs"]  # only the output asked for
    native_answer = post(client, "/models/tabular/predict", {"instances": [
        {"age": a, "city": c} for a, c in zip(ages, cities, strict=True)]})
    native = native_answer["predictions"]  # the scores output's best classes
    np.testing.assert_allclose(native_answer["outputs"]["amount"], expected["amount"],
                               rtol=1e-6)  # and every other output
    for name in ("approval", "amount"):
        want = expected[name]
        np.testing.assert_allclose([row[name] for row in rows], want, rtol=1e-6)
        np.testing.assert_allclose(columns[name], want, rtol=1e-6)
        np.testing.assert_allclose(np.reshape(v2[name]["data"], v2[name]["shape"]), want,
                                   rtol=1e-6)
    assert binary["name"] == "amount"
    np.testing.assert_allclose(binary["data"], expected["amount"].ravel(), rtol=1e-6)
    best = [p["top_k"][0] for p in native]
    assert [b["label"] for b in best] == [["declined", "approved"][i]
                                          for i in expected["approval"].argmax(1)]
    np.testing.assert_allclose([b["probability"] for b in best],
                               expected["approval"].max(1), rtol=1e-6)


def test_raw_strings_and_binary_strings(client: TestClient):
    texts = ["good fine", "awful awful", "", "héllo great"]
    expected = reference("text", text=np.array([t.encode() for t in texts], dtype=object))
    rows = post(client, "/v1/models/text:predict", {"instances": texts})["predictions"]
    b64 = post(client, "/v1/models/text:predict", {"instances": [
        {"b64": base64.b64encode(t.encode()).decode()} for t in texts]})["predictions"]
    (v2,) = post(client, "/v2/models/text/infer", {"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [4], "data": texts}]})["outputs"]
    for answer in (rows, b64, np.reshape(v2["data"], v2["shape"])):
        np.testing.assert_allclose(answer, expected["probabilities"], rtol=1e-6)


@pytest.mark.parametrize("length", [1, 3, 9])
def test_sequences_of_any_length(client: TestClient, length: int):
    ids = np.arange(2 * length, dtype=np.int32).reshape(2, length) % 100
    mask = np.ones_like(ids)
    mask[1, length // 2:] = 0
    expected = reference("sequence", input_ids=ids, attention_mask=mask)["logits"]
    rows = post(client, "/v1/models/sequence:predict", {"instances": [
        {"input_ids": i, "attention_mask": m}
        for i, m in zip(ids.tolist(), mask.tolist(), strict=True)]})["predictions"]
    (v2,) = post(client, "/v2/models/sequence/infer", {"inputs": [
        {"name": "input_ids", "datatype": "INT32", "shape": list(ids.shape),
         "data": ids.ravel().tolist()},
        {"name": "attention_mask", "datatype": "INT32", "shape": list(ids.shape),
         "data": mask.ravel().tolist()}]})["outputs"]
    np.testing.assert_allclose(rows, expected, rtol=1e-5)
    np.testing.assert_allclose(np.reshape(v2["data"], v2["shape"]), expected, rtol=1e-5)


def test_an_image_beside_a_feature_vector(client: TestClient):
    blobs = [p.read_bytes() for p in SAMPLES[:3]]
    extra = np.array([[0.5, 1.0], [0.0, -1.0], [2.0, 0.25]], np.float32)
    photos = decode_images(blobs, ImageGeometry(8, 8, 1), 10**8, 2**30)
    expected = reference("photo_meta", photo=photos, extra=extra)["probabilities"]
    rows = post(client, "/v1/models/photo_meta:predict", {"instances": [
        {"photo": {"b64": base64.b64encode(b).decode()}, "extra": e}
        for b, e in zip(blobs, extra.tolist(), strict=True)]})["predictions"]
    framed = b"".join(len(b).to_bytes(4, "little") + b for b in blobs)
    header = {"inputs": [
        {"name": "photo", "datatype": "BYTES", "shape": [3],
         "parameters": {"binary_data_size": len(framed)}},
        {"name": "extra", "datatype": "FP32", "shape": [3, 2], "data": extra.ravel().tolist()}]}
    body, headers = binary_request(header, [framed])
    r = client.post("/v2/models/photo_meta/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    (v2,) = r.json()["outputs"]
    np.testing.assert_allclose(rows, expected, rtol=1e-5)
    np.testing.assert_allclose(np.reshape(v2["data"], v2["shape"]), expected, rtol=1e-5)


def _tf_examples(examples: list[dict]) -> np.ndarray:
    """The same examples as TensorFlow serializes them."""
    def feature(value):
        values = value if isinstance(value, list) else [value]
        if isinstance(values[0], str):
            return tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[v.encode() for v in values]))
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    return np.array([tf.train.Example(features=tf.train.Features(
        feature={k: feature(v) for k, v in e.items()})).SerializeToString()
        for e in examples], dtype=object)


EXAMPLES = [{"x": [1.0, 2.0], "color": "blue"}, {"x": [0.5, -1.5]},
            {"x": [-3.0, 0.25], "color": "green"}]


def test_classify_and_regress_answer_as_tf_serving(client: TestClient):
    expected = reference("examples", inputs=_tf_examples(EXAMPLES))
    results = post(client, "/v1/models/examples:classify", {"examples": EXAMPLES})["results"]
    assert [[label for label, _ in r] for r in results] == expected["classes"].astype(
        str).tolist()
    np.testing.assert_allclose([[score for _, score in r] for r in results],
                               expected["scores"], rtol=1e-6)
    regressed = reference("examples", "regress", inputs=_tf_examples(EXAMPLES))["outputs"]
    answer = post(client, "/v1/models/examples_regress:regress", {"examples": EXAMPLES})
    np.testing.assert_allclose(answer["results"], regressed.ravel(), rtol=1e-6)
    shared = post(client, "/v1/models/examples_regress:regress",
                  {"context": {"color": "green"}, "examples": [{"x": [1.0, 1.0]}]})
    assert shared["results"] == pytest.approx([3.0])  # 1 + 1 + green's 1.0
    # :predict on a classify signature takes the serialized examples themselves.
    predicted = post(client, "/v1/models/examples:predict", {"instances": [
        {"b64": base64.b64encode(e).decode()} for e in _tf_examples(EXAMPLES)]})
    np.testing.assert_allclose([p["scores"] for p in predicted["predictions"]],
                               expected["scores"], rtol=1e-6)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/models/sequence:predict",
         {"instances": [{"input_ids": [2**40], "attention_mask": [1]}]}, 400,
         "'input_ids'.*int32"),
        ("/v1/models/sequence:predict",
         {"instances": [{"input_ids": [1.5], "attention_mask": [1]}]}, 400, "'input_ids'"),
        ("/v1/models/sequence:predict",
         {"instances": [{"input_ids": [1, 2], "attention_mask": [1, 1]},
                        {"input_ids": [1], "attention_mask": [1]}]}, 400, "ragged"),
        ("/v1/models/sequence:predict",
         {"instances": [{"input_ids": [500], "attention_mask": [1]}]}, 400,
         "refused the input: indices.* = 500 is not in"),
        ("/v1/models/sequence:predict", {"instances": [{"input_ids": [5]}]}, 400,
         "missing 'attention_mask'"),
        ("/v1/models/tabular:predict", {"inputs": {"age": [["x"]], "city": [["lyon"]]}}, 400,
         "'age'"),
        ("/v1/models/tabular:predict", {"inputs": {"age": [[1.0]], "city": [[3]]}}, 400,
         "'city'.*strings"),
        ("/v1/models/tabular:predict", {"inputs": {"age": [[1.0], [2.0]], "city": [["a"]]}},
         400, "different numbers of rows"),
        ("/v1/models/tabular:predict", {"instances": [[1.0]]}, 400, "must name every input"),
        ("/v1/models/text:predict", {"instances": ["\ud800"]}, 400, "not valid Unicode"),
        ("/v1/models/tabular:classify", {"examples": [{}]}, 400, "not a classify signature"),
        ("/v1/models/examples:classify", {"examples": [{"x": [1.0]}]}, 400,
         "refused the input: .*Key: x"),
        ("/v1/models/examples:classify", {"signature_name": "regress",
                                          "examples": [{"x": [1.0, 2.0]}]}, 400,
         "Expected classification signature outputs.*not a classify signature"),
        ("/v1/models/examples:explain", {}, 400, "unknown verb :explain"),
        ("/v1/models/nope:classify", {"examples": [{}]}, 404, "nope"),
        ("/models/tabular/predict", {"instances": [[1.0]]}, 400, "must name every input"),
    ],
)
def test_bad_inputs_are_4xx_naming_the_problem(client: TestClient, path, body, status,
                                               message):
    # (ASCII JSON: a lone surrogate travels as its \\ud800 escape.)
    r = client.post(path, content=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert re.search(message, r.json()["error"]), r.json()["error"]


def test_metadata_describes_every_input_and_output(client: TestClient):
    tfs = client.get("/v1/models/tabular/metadata").json()["metadata"]["signature_def"]
    signature = tfs["signature_def"]["serving_default"]
    assert {k: v["dtype"] for k, v in signature["inputs"].items()} == {
        "age": "DT_FLOAT", "city": "DT_STRING"}
    assert set(signature["outputs"]) == {"approval", "amount"}
    v2 = client.get("/v2/models/tabular").json()
    assert [(t["name"], t["datatype"], t["shape"]) for t in v2["inputs"]] == [
        ("age", "FP32", [-1, 1]), ("city", "BYTES", [-1, 1])]
    assert [t["name"] for t in v2["outputs"]] == ["amount", "approval"]
    sequence = client.get("/v2/models/sequence").json()
    assert all(t["shape"] == [-1, -1] for t in sequence["inputs"])
    examples = client.get("/v1/models/examples/metadata").json()["metadata"]
    assert examples["signature_def"]["signature_def"]["serving_default"]["method_name"] == \
        "tensorflow/serving/classify"



class _TwoSignatures(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def double(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": 2 * x}

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="z")])
    def triple(self, z: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": 3 * z}


def save_two_signatures(path: Path) -> None:
    """A SavedModel with signatures ``double`` (x: float32[N, 3] → y) and
    ``triple`` (z: float32[N, 2] → y), and no ``serving_default``."""
    module = _TwoSignatures()
    tf.saved_model.save(module, str(path),
                        signatures={"double": module.double, "triple": module.triple})


NO_DEFAULT = 'Serving signature name: "serving_default" not found in signature def'


def test_a_savedmodel_without_serving_default_answers_requests_that_name_a_signature(tmp_path):
    """As TF Serving serves it: it loads, a request naming a signature gets
    it, one naming none gets TF Serving's 400 on every protocol, before its
    body is read against any signature."""
    save_two_signatures(tmp_path / "m" / "1")
    args = AppArgs.model_validate({"models": [{"name": "m", "path": str(tmp_path / "m")}]})
    with TestClient(build_app(args)) as http:
        for signature, row, factor in (("double", [1.0, 2.0, 3.0], 2), ("triple", [1.0, 2.0], 3)):
            answer = http.post("/v1/models/m:predict",
                               json={"signature_name": signature, "instances": [row]})
            assert answer.json() == {"predictions": [[factor * v for v in row]]}
        for path, body in (("/v1/models/m:predict", {"instances": [[1.0, 2.0]]}),
                           ("/v1/models/m:classify", {"examples": [{"z": [1.0, 2.0]}]}),
                           ("/v2/models/m/infer", {"inputs": [{
                               "name": "z", "shape": [1, 2], "datatype": "FP32",
                               "data": [1.0, 2.0]}]})):
            unnamed = http.post(path, json=body)
            assert unnamed.status_code == 400, path
            assert unnamed.json()["error"].startswith(NO_DEFAULT), unnamed.json()
        metadata = http.get("/v1/models/m/metadata").json()["metadata"]["signature_def"]
        assert {"double", "triple"} <= set(metadata["signature_def"])


class _Bfloat16(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.bfloat16, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": 2 * x, "f": tf.cast(x, tf.float32) + 1}


def test_a_bfloat16_model_on_tf_serving_rest_and_v2_as_tritonclient_sends_it(tmp_path):
    """bfloat16 in and out: TF Serving's JSON numbers, V2's BF16 in JSON and in
    tritonclient's own binary encoding (ml_dtypes), and its metadata."""
    import tritonclient.http as triton

    module = _Bfloat16()
    tf.saved_model.save(module, str(tmp_path / "b" / "1"),
                        signatures={"serving_default": module.serve})
    args = AppArgs.model_validate({"models": [{"name": "b", "path": str(tmp_path / "b")}]})
    x = np.array([[1.5, -2.0], [0.25, 3.0]], tf.bfloat16.as_numpy_dtype)
    with TestClient(build_app(args)) as http:
        rest = http.post("/v1/models/b:predict", json={"instances": x.astype(float).tolist()})
        assert rest.json() == {"predictions": [{"y": [3.0, -4.0], "f": [2.5, -1.0]},
                                               {"y": [0.5, 6.0], "f": [1.25, 4.0]}]}
        metadata = http.get("/v2/models/b").json()
        assert metadata["inputs"] == [{"name": "x", "datatype": "BF16", "shape": [-1, 2]}]
        given = triton.InferInput("x", list(x.shape), "BF16")
        given.set_data_from_numpy(x, binary_data=True)
        body, length = triton.InferenceServerClient.generate_request_body(
            [given], [triton.InferRequestedOutput("y", binary_data=True)])
        answer = http.post("/v2/models/b/infer", content=body,
                           headers={"Inference-Header-Content-Length": str(length)})
        assert answer.status_code == 200, answer.text
        result = triton.InferenceServerClient.parse_response_body(
            answer.content, header_length=int(answer.headers["Inference-Header-Content-Length"]))
        np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)
