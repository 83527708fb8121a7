"""Several models in one app, addressed by name on every route; the routing
table's own answers (unknown routes and methods, the OpenAPI document)."""

from __future__ import annotations

import httpx

from tests.common import SAMPLES


def test_models_are_listed_with_their_input_kind(client: httpx.Client):
    listing = client.get("/models").json()
    assert listing["default"] == "digits"
    by_name = {m["name"]: m for m in listing["models"]}
    assert by_name["digits"]["input"] == "image"
    assert by_name["digits"]["input_shape"] == [-1, 28, 28, 1]
    assert by_name["digits_linear"]["input"] == "tensor"
    assert by_name["digits_linear"]["versions"] == [1]


def test_native_routes_address_models_by_name(client: httpx.Client):
    image = {"content": SAMPLES[0].read_bytes(), "headers": {"Content-Type": "image/png"}}
    assert client.post("/predict", **image).json()["model"] == "digits"
    assert client.post("/models/digits/versions/1/predict", **image).json()["version"] == 1
    r = client.post("/models/digits_linear/predict", json={"instances": [[0.0] * 64]})
    assert r.status_code == 200 and r.json()["model"] == "digits_linear"
    wrong_kind = client.post("/models/digits_linear/predict", **image)
    assert wrong_kind.status_code == 400
    assert "takes tensors ('pixels': float32[N, 64]), not encoded images" in \
        wrong_kind.json()["error"]
    unknown = client.post("/models/nope/predict", **image)
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "Servable not found for request: Latest(nope): no model "
                                      "named 'nope' (served: digits, digits_linear)"}


def test_unknown_routes_and_methods_answer_json(client: httpx.Client):
    r = client.get("/no/such/route")
    assert r.status_code == 404 and r.json() == {"error": "Not Found: GET /no/such/route"}
    r = client.get("/predict")
    assert r.status_code == 405 and "Method Not Allowed" in r.json()["error"]


def test_openapi_document_is_served(client: httpx.Client):
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert "/v2/models/{name}/infer" in document["paths"]
    params = document["paths"]["/v1/models/{name}:predict"]["post"]["parameters"]
    assert params[0]["schema"]["enum"] == ["digits", "digits_linear"]
