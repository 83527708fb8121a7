"""A model's own pre- and postprocessing code (``preprocess``/``postprocess``
in the YAML) on the native, TF Serving REST and V2 routes: what it does to a
request, and how its errors reach the client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits
from starlette.testclient import TestClient

from tests.app.conftest import build_app, config_args

CODE = "tests.app.user_code"
# Each a copy of the tensor model (float32[N, 64], values 0-16) with code of its own.
MODELS = {
    "plain": {},
    "scaled": {"preprocess": f"{CODE}:to_counts", "postprocess": f"{CODE}:with_digit"},
    "scaled_async": {"preprocess": f"{CODE}:to_counts_async"},
    "checked": {"preprocess": f"{CODE}:no_negatives"},
    "fragile": {"preprocess": f"{CODE}:fragile"},
    "as_lists": {"postprocess": f"{CODE}:as_lists"},
    "digit_only": {"postprocess": f"{CODE}:digit_only"},
}
PROTOCOLS = ["native", "tfserving", "v2"]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    linear = config_args().models[1].model_dump(exclude_unset=True)
    models = [{**linear, "name": name, **code} for name, code in MODELS.items()]
    with TestClient(build_app(config_args(models=models)), base_url="http://app",
                    raise_server_exceptions=False) as c:
        yield c


def counts() -> np.ndarray:
    """Three of sklearn's 8x8 digits, as the model takes them (0-16)."""
    return load_digits().data[:3].astype(np.float32)


def ask(client: TestClient, protocol: str, model: str, rows: np.ndarray) -> httpx.Response:
    if protocol == "native":
        return client.post(f"/models/{model}/predict?scores=true",
                           json={"instances": rows.tolist()})
    if protocol == "tfserving":
        return client.post(f"/v1/models/{model}:predict", json={"instances": rows.tolist()})
    return client.post(f"/v2/models/{model}/infer", json={"inputs": [
        {"name": "pixels", "datatype": "FP32", "shape": list(rows.shape),
         "data": rows.ravel().tolist()}]})


def outputs(protocol: str, r: httpx.Response) -> dict[str, np.ndarray]:
    """Every output of a 200 answer, by name."""
    assert r.status_code == 200, r.text
    body = r.json()
    if protocol == "native":
        return {"probabilities": np.array([p["scores"] for p in body["predictions"]]),
                **{k: np.array(v) for k, v in body.get("outputs", {}).items()}}
    if protocol == "tfserving":
        rows = body["predictions"]
        if isinstance(rows[0], dict):  # several outputs: one object per row
            return {k: np.array([row[k] for row in rows]) for k in rows[0]}
        return {"probabilities": np.array(rows)}
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in body["outputs"]}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pre_and_post_transform_every_protocol(client: TestClient, protocol: str):
    expected = outputs(protocol, ask(client, protocol, "plain", counts()))["probabilities"]
    answer = outputs(protocol, ask(client, protocol, "scaled", counts() / 16))
    assert np.allclose(answer["probabilities"], expected, atol=1e-6)
    assert answer["digit"].tolist() == expected.argmax(axis=1).tolist()


def test_async_pre(client: TestClient):
    expected = outputs("v2", ask(client, "v2", "plain", counts()))
    answer = outputs("v2", ask(client, "v2", "scaled_async", counts() / 16))
    assert np.allclose(answer["probabilities"], expected["probabilities"], atol=1e-6)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_our_error_class_is_the_clients_answer(client: TestClient, protocol: str):
    r = ask(client, protocol, "checked", -counts())
    assert r.status_code == 400
    assert r.json() == {"error": "pixels must not be negative"}
    assert ask(client, protocol, "checked", counts()).status_code == 200


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_any_other_error_is_a_500_naming_the_callable(client: TestClient, protocol: str):
    r = ask(client, protocol, "fragile", counts() * 100)
    assert r.status_code == 500
    assert r.json() == {"error": f"preprocess {CODE}:fragile raised ValueError"}
    assert ask(client, protocol, "fragile", counts()).status_code == 200  # still serving


def test_post_dropping_the_scores_answers_its_own_outputs(client: TestClient):
    r = ask(client, "native", "digit_only", counts())
    assert r.status_code == 200, r.text
    assert "predictions" not in r.json()  # nothing to rank
    assert r.json()["outputs"] == {"digit": [0, 1, 2]}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_post_answering_no_arrays_is_a_clear_500(client: TestClient, protocol: str):
    r = ask(client, protocol, "as_lists", counts())
    assert r.status_code == 500
    assert r.json() == {"error": f"postprocess {CODE}:as_lists returned a list for "
                                 "'probabilities', not a dict of numpy arrays by name"}
