"""Models of several inputs on the cluster: the Python handle (arrays, or
ObjectRefs by input name), V2 gRPC and HTTP answer as the SavedModel does in
this process; concurrent sequences of different lengths are batched with
their own length, and one request's bad values fail it alone."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import httpx
import numpy as np
import pytest
import ray
import tritonclient.grpc as grpcclient
from ray import serve

from deployments.app import build_app
from deployments.errors import BadRequest
from tests.app.test_signatures import save_two_signatures
from tests.common import signature_models

APP = "signatures"


@pytest.fixture(scope="module")
def app(base_url: str, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[serve.handle.DeploymentHandle]:
    root = signature_models()
    no_default = tmp_path_factory.mktemp("no_default")
    save_two_signatures(no_default / "1")
    handle = serve.run(build_app({"models": [
        {"name": "tabular", "path": str(root / "tabular"), "scores_output": "approval",
         "labels_path": str(root / "tabular" / "labels.txt")},
        {"name": "sequence", "path": str(root / "sequence")},
        {"name": "examples", "path": str(root / "examples")},
        {"name": "no_default", "path": str(no_default)},
    ]}), name=APP, route_prefix=f"/{APP}")
    yield handle
    serve.delete(APP, _blocking=False)  # (goes while the next module starts)


@cache
def _signature(model: str):
    import tensorflow as tf

    return tf.saved_model.load(str(signature_models() / model / "1")).signatures[
        "serving_default"]


def reference(model: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    import tensorflow as tf

    return {k: v.numpy() for k, v in _signature(model)(
        **{k: tf.constant(v) for k, v in inputs.items()}).items()}


TABULAR = {"age": np.array([[22.0], [64.0]], np.float32),
           "city": np.array([[b"lima"], [b"oslo"]], dtype=object)}


def test_handle_grpc_and_http_answer_as_the_model(app, base_url: str, grpc_address: str):
    expected = reference("tabular", **TABULAR)
    by_value = app.predict.remote(TABULAR, model="tabular", scores=True).result()
    by_ref = app.predict.remote({k: ray.put(v) for k, v in TABULAR.items()},
                                model="tabular", scores=True).result()
    for answer in (by_value, by_ref):
        np.testing.assert_allclose([p["scores"] for p in answer["predictions"]],
                                   expected["approval"], rtol=1e-6)
    grpc = grpcclient.InferenceServerClient(grpc_address)
    age = grpcclient.InferInput("age", [2, 1], "FP32")
    age.set_data_from_numpy(TABULAR["age"])
    city = grpcclient.InferInput("city", [2, 1], "BYTES")
    city.set_data_from_numpy(TABULAR["city"])
    result = grpc.infer("tabular", [age, city], headers={"application": APP})
    for name in ("approval", "amount"):
        np.testing.assert_allclose(result.as_numpy(name), expected[name], rtol=1e-6)
    rows = httpx.post(f"{base_url}/{APP}/v1/models/tabular:predict", timeout=60, json={
        "instances": [{"age": [22.0], "city": ["lima"]}, {"age": [64.0], "city": ["oslo"]}]})
    assert rows.status_code == 200, rows.text
    np.testing.assert_allclose([p["amount"] for p in rows.json()["predictions"]],
                               expected["amount"], rtol=1e-6)
    examples = [{"x": [1.0, 2.0], "color": "blue"}, {"x": [0.5, -1.5]}]
    classified = httpx.post(f"{base_url}/{APP}/v1/models/examples:classify", timeout=60,
                            json={"examples": examples})
    assert classified.status_code == 200, classified.text
    assert [[label for label, _ in r] for r in classified.json()["results"]] == [
        ["no", "yes"]] * 2


def test_concurrent_sequences_of_mixed_lengths_each_get_their_own_answer(app):
    rng = np.random.default_rng(0)
    lengths = [3, 8, 5, 3, 8, 5, 3, 12] * 3
    requests = []
    for i, length in enumerate(lengths):
        ids = rng.integers(0, 100, (2, length), dtype=np.int32)
        if i in (4, 9):
            ids[1, 0] = 500  # past the vocabulary: the model refuses this one
        mask = (rng.random((2, length)) < 0.8).astype(np.int32)
        requests.append({"input_ids": ids, "attention_mask": mask})
    stats_before = serve.get_deployment_handle("sequence", APP).stats.remote().result()
    # All in flight at once: the replica merges what shares a length.
    responses = [app.predict.remote({k: ray.put(v) for k, v in r.items()}, model="sequence",
                                    scores=True) for r in requests]
    for i, (request, response) in enumerate(zip(requests, responses, strict=True)):
        if i in (4, 9):
            with pytest.raises(BadRequest, match=r"refused the input: indices.*500"):
                response.result()
            continue
        expected = reference("sequence", **request)["logits"]
        answer = [p["scores"] for p in response.result()["predictions"]]
        np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-6)
    stats = serve.get_deployment_handle("sequence", APP).stats.remote().result()
    calls = {int(rows): n - stats_before["batch_rows"].get(rows, 0)
             for rows, n in stats["batch_rows"].items()}
    # Some TF calls held more than one request's two rows.
    assert any(rows > 2 and n > 0 for rows, n in calls.items()), calls


def test_a_savedmodel_without_serving_default_serves_its_named_signatures(app, base_url: str):
    """Its replica warms up and sizes batches on a stand-in; requests name one."""
    url = f"{base_url}/{APP}/v1/models/no_default:predict"
    for signature, row, factor in (("double", [1.0, 2.0, 3.0], 2), ("triple", [1.0, 2.0], 3)):
        answer = httpx.post(url, timeout=60, json={"signature_name": signature,
                                                   "instances": [row] * 2})
        assert answer.json() == {"predictions": [[factor * v for v in row]] * 2}
    unnamed = httpx.post(url, timeout=60, json={"instances": [[1.0, 2.0, 3.0]]})
    assert unnamed.status_code == 400
    assert 'Serving signature name: "serving_default" not found' in unnamed.json()["error"]
