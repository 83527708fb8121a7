"""Pipelines in process: the example digit reader (locator → crop → digits)
on the native, TF Serving REST and V2 routes, equal to its stages called one
after the other; a model used twice side by side; and what a client hears
when a step's code or the wiring is at fault."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest
from sklearn.datasets import load_digits
from starlette.testclient import TestClient

from harness.reader import locator_model, reader_app
from models.build_locator import canvases
from tests.app.conftest import build_app, config_args
from tests.app.user_code import tokenize
from tests.common import read_in_process, signature_models

CODE = "tests.app.user_code"
READER = reader_app()["args"]["pipelines"][0]


def reader_with(name: str, transform: str) -> dict:
    """The example pipeline under ``name`` with another transform."""
    read = {**READER["steps"][1], "transform": transform}
    return {**READER, "name": name, "steps": [READER["steps"][0], read]}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    locator_model()
    args = reader_app()["args"]
    args["models"] += [config_args().models[1].model_dump(exclude_unset=True),
                       {"name": "sequence", "path": str(signature_models() / "sequence")}]
    args["pipelines"] += [
        {"name": "twice", "steps": [  # one model, two steps side by side
            {"name": "a", "model": "digits_linear", "inputs": {"pixels": "request.pixels"}},
            {"name": "b", "model": "digits_linear", "inputs": {"pixels": "request.pixels"}}],
         "outputs": {"first": "a.probabilities", "second": "b.probabilities"}},
        reader_with("picky", f"{CODE}:crop_or_refuse"),
        reader_with("sloppy", f"{CODE}:crop_badly"),
        reader_with("crashing", f"{CODE}:crash"),
        reader_with("fanning", f"{CODE}:crop_many"),
        {**READER, "name": "miswired", "outputs": {"box": "locate.boxes"}},
        {"name": "texts", "inputs": {"text": {"dtype": "string", "shape": [-1]}},
         "steps": [{"model": "sequence", "inputs": {"text": "request.text"},
                    "transform": f"{CODE}:tokenize"}]},
    ]
    with TestClient(build_app(config_args(**args)), base_url="http://app",
                    raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    images, _, labels = canvases(6, seed=5)
    images = images[..., None]
    return images, labels, read_in_process(images)


def test_every_route_answers_as_the_stages_one_after_the_other(client: TestClient, sample):
    images, labels, expected = sample
    rest = client.post("/v1/models/digit_reader:predict",
                       json={"inputs": {"image": images.tolist()}})
    assert rest.status_code == 200, rest.text
    for name, value in expected.items():
        np.testing.assert_allclose(rest.json()["outputs"][name], value, atol=1e-5)
    v2 = client.post("/v2/models/digit_reader/infer", json={"inputs": [
        {"name": "image", "shape": list(images.shape), "datatype": "FP32",
         "data": images.ravel().tolist()}]})
    assert v2.status_code == 200, v2.text
    for output in v2.json()["outputs"]:
        np.testing.assert_allclose(np.reshape(output["data"], output["shape"]),
                                   expected[output["name"]], atol=1e-5)
    native = client.post("/models/digit_reader/predict?scores=true",
                         json={"instances": images.tolist()})
    assert native.status_code == 200, native.text
    predictions = native.json()["predictions"]
    np.testing.assert_allclose([p["scores"] for p in predictions], expected["probabilities"],
                               atol=1e-5)
    assert [p["top_k"][0]["label"] for p in predictions] == \
        [str(i) for i in expected["probabilities"].argmax(1)]
    assert (expected["probabilities"].argmax(1) == labels).mean() >= 0.8


def test_metadata_lists_the_pipeline_as_a_model(client: TestClient):
    models = client.get("/models").json()["models"]
    reader = next(m for m in models if m["name"] == "digit_reader")
    assert reader["input"] == "image"
    assert reader["labels"] == [str(i) for i in range(10)]  # the digits model's
    miswired = next(m for m in models if m["name"] == "miswired")
    assert "has no such output" in miswired["error"]  # listed, hiding no other model
    status = client.get("/v1/models/digit_reader").json()
    assert status["model_version_status"][0]["version"] == "1"
    meta = client.get("/v2/models/digit_reader").json()
    assert sorted(o["name"] for o in meta["outputs"]) == ["box", "probabilities"]


def test_one_model_twice_side_by_side(client: TestClient):
    pixels = load_digits().data[:3].astype(np.float32)
    alone = client.post("/v1/models/digits_linear:predict", json={"instances": pixels.tolist()})
    twice = client.post("/v1/models/twice:predict", json={"inputs": {"pixels": pixels.tolist()}})
    assert twice.status_code == 200, twice.text
    expected = np.array([p for p in alone.json()["predictions"]])
    for name in ("first", "second"):
        np.testing.assert_allclose(twice.json()["outputs"][name], expected, atol=1e-6)


def test_a_transforms_own_error_is_the_clients_answer(client: TestClient, sample):
    images, _, _ = sample
    lit = images[:2].copy()
    lit[1, 0, 0] = 1.0
    answer = client.post("/v1/models/picky:predict", json={"inputs": {"image": lit.tolist()}})
    assert answer.status_code == 400
    assert answer.json() == {"error": "a lit corner: not a canvas this reader takes"}
    fine = client.post("/v1/models/picky:predict", json={"inputs": {"image": images[:1].tolist()}})
    assert fine.status_code == 200, fine.text


def test_faults_of_the_pipeline_are_500s_that_name_it(client: TestClient, sample,
                                                      caplog: pytest.LogCaptureFixture):
    body = {"inputs": {"image": sample[0][:1].tolist()}}
    sloppy = client.post("/v1/models/sloppy:predict", json=body)
    assert sloppy.status_code == 500
    assert sloppy.json()["error"] == (
        "pipeline 'sloppy' step 'read': input 'image' has shape [1, 20, 20, 1], expected "
        "float32[N, 28, 28, 1]")
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        crashing = client.post("/v1/models/crashing:predict", json=body)
    assert crashing.status_code == 500
    assert crashing.json()["error"] == f"transform {CODE}:crash raised ValueError"
    assert "secret internal detail" in caplog.text  # logged, not told
    miswired = client.post("/v1/models/miswired:predict", json=body)
    assert miswired.status_code == 500
    assert miswired.json()["error"] == (
        "pipeline 'miswired' step 'read' reads 'boxes' from model 'locator', which has no "
        "such output (it has: box)")
    assert client.post("/v1/models/digit_reader:predict", json=body).status_code == 200


def test_inputs_a_transform_builds_are_held_to_the_limits(client: TestClient, sample):
    """100 crops per canvas: two canvases are 200 rows, three beyond
    ``max_rows`` (256), which the pipeline, not the client, went past."""
    images = sample[0]
    two = client.post("/v1/models/fanning:predict", json={"inputs": {"image": images[:2].tolist()}})
    assert two.status_code == 200, two.text
    assert np.shape(two.json()["outputs"]["probabilities"]) == (200, 10)
    three = client.post("/v1/models/fanning:predict",
                        json={"inputs": {"image": images[:3].tolist()}})
    assert three.status_code == 500
    assert three.json() == {"error": "pipeline 'fanning' step 'read': input 'image' has 300 "
                                     "rows, the limit is 256"}


def test_a_canvas_the_locator_finds_no_box_in_is_the_clients_400(client: TestClient):
    """Finite float32 values that huge overflow the locator to a NaN box."""
    huge = np.full((1, 40, 40, 1), 3e38, np.float32)
    answer = client.post("/v1/models/digit_reader:predict",
                         json={"inputs": {"image": huge.tolist()}})
    assert answer.status_code == 400
    assert answer.json() == {"error": "no digit found in image 0 (the locator found no box: "
                                      "pixels are expected from 0 to 1)"}


def test_a_transform_takes_inputs_the_model_does_not(client: TestClient):
    """A tokenizer before a model of token ids: the pipeline takes text."""
    texts = ["a short one", "and a longer text", "x"]
    answer = client.post("/v2/models/texts/infer", json={"inputs": [
        {"name": "text", "shape": [3], "datatype": "BYTES", "data": texts}]})
    assert answer.status_code == 200, answer.text
    (logits,) = answer.json()["outputs"]
    tokens = tokenize({"text": np.array(texts, dtype=object)})
    direct = client.post("/v1/models/sequence:predict", json={
        "inputs": {name: array.tolist() for name, array in tokens.items()}})
    np.testing.assert_allclose(np.reshape(logits["data"], logits["shape"]),
                               direct.json()["outputs"], atol=1e-6)
    meta = client.get("/v1/models/texts/metadata").json()["metadata"]["signature_def"]
    assert meta["signature_def"]["serving_default"]["inputs"]["text"]["dtype"] == "DT_STRING"
    empty = client.post("/v1/models/texts:predict", json={"instances": ["fine", ""]})
    assert empty.status_code == 400
    assert empty.json() == {"error": "text must not be empty"}
