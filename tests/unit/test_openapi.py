"""The OpenAPI document is made from the routing table: valid, every API route
documented (or left out on purpose), model names from the config."""

import pytest
from openapi_spec_validator import validate

from deployments.config import AuthArgs, InputLimits
from deployments.ingress.asgi import api_routes
from deployments.ingress.openapi import OPERATIONS, openapi_document

ROUTES = api_routes(None, InputLimits(), 3)


def test_document_is_valid_openapi():
    validate(openapi_document(ROUTES, ["digits", "digits_linear"]))


def test_every_route_has_an_operation_and_every_operation_a_route():
    assert {route.name for route in ROUTES} == set(OPERATIONS)


def test_document_lists_every_route_and_method_but_the_error_verbs():
    document = openapi_document(ROUTES, ["digits"])
    documented = {(path, method) for path, item in document["paths"].items()
                  for method in item}
    served = {(route.path, method.lower()) for route in ROUTES
              for method in route.methods - {"HEAD"}}
    # TF Serving's other verbs (:classify, :regress) answer with an error.
    verbs = {("/v1/models/{name}:{verb}", "post"),
             ("/v1/models/{name}/versions/{version}:{verb}", "post"),
             ("/v1/models/{name}/labels/{label}:{verb}", "post")}
    assert documented == served - verbs
    assert len(documented) >= 21


def test_model_names_come_from_the_config():
    document = openapi_document(ROUTES, ["a", "b"])
    params = document["paths"]["/v2/models/{name}/infer"]["post"]["parameters"]
    assert params[0]["schema"]["enum"] == ["a", "b"]


@pytest.mark.parametrize(("path", "protocol"), [
    ("/predict", "native"), ("/models/{name}/versions/{version}/predict", "native"),
    ("/v1/models/{name}:predict", "tfserving"), ("/v2/models/{name}/infer", "v2"),
    ("/v2", "v2"), ("/healthz", "other"),
])
def test_each_route_knows_its_protocol(path, protocol):
    assert {r.protocol for r in ROUTES if r.path == path} == {protocol}


def test_with_auth_every_operation_but_the_probes_needs_a_token():
    auth = AuthArgs(tokens_env="RAY_TF_SERVE_TOKENS", api_key_header=True)
    document = openapi_document(ROUTES, ["digits"], auth)
    validate(document)
    assert document["security"] == [{"bearer": []}, {"apiKey": []}]
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    open_paths = {path for path, item in document["paths"].items()
                  if item["get" if "get" in item else "post"].get("security") == []}
    assert open_paths == {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}
    assert "401" in document["paths"]["/v2/models/{name}/infer"]["post"]["responses"]
    assert "security" not in openapi_document(ROUTES, ["digits"], AuthArgs())
