"""The OpenAPI document is valid and lists exactly the API routes the app serves."""

from openapi_spec_validator import validate

from deployments.config import InputLimits
from deployments.openapi import openapi_document
from deployments.protocols import ui
from deployments.protocols.native import NativeApi
from deployments.protocols.tfserving import TFServingApi
from deployments.protocols.v2 import V2Api

HEALTH = {("/healthz", "get"), ("/readyz", "get"), ("/openapi.json", "get")}


def served_routes() -> set[tuple[str, str]]:
    apis = [NativeApi(None, InputLimits(), 3), TFServingApi(None, InputLimits()),
            V2Api(None, InputLimits())]
    pages = {(mount.path + "/{path}", "get") for mount in ui.routes()}
    return HEALTH | pages | {
        (route.path, method.lower())
        for api in apis for route in api.routes() for method in route.methods - {"HEAD"}
    }


def test_document_is_valid_openapi():
    validate(openapi_document(["digits", "digits_linear"]))


def test_document_lists_every_route_and_method():
    document = openapi_document(["digits"])
    documented = {(path, method) for path, item in document["paths"].items()
                  for method in item}
    served = served_routes()
    # The catch-all for TF Serving's other verbs (:classify, :regress) is an error route.
    served -= {("/v1/models/{name}:{verb}", "post"),
               ("/v1/models/{name}/versions/{version}:{verb}", "post")}
    # The demo page's static files are for people, not API clients (nor the fuzzer).
    served -= {("/ui/{path}", "get")}
    assert documented == served


def test_model_names_come_from_the_config():
    document = openapi_document(["a", "b"])
    params = document["paths"]["/v2/models/{name}/infer"]["post"]["parameters"]
    assert params[0]["schema"]["enum"] == ["a", "b"]
