"""The OpenAPI 3.1 document of every HTTP route (served at ``/openapi.json``),
made from the app's routing table: each route's operation is looked up by the
route's name, so a route cannot be served without being documented.

The operations are written from the protocol documents, so they state exactly
what each route takes; model names are listed from the config.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version as package_version
from typing import Any, cast

from deployments.codecs.v2_json import InferRequestHeader
from deployments.codecs.v2_tensor import BYTES, DATATYPES
from deployments.config import AuthArgs
from deployments.ingress.protocols.routes import ApiRoute

Schema = dict[str, Any]

_NUMBERS: Schema = {"type": "array", "items": {}, "description": "nested lists of numbers"}
_ERROR: Schema = {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}}
_B64: Schema = {"type": "object", "required": ["b64"], "properties": {"b64": {"type": "string"}},
                "additionalProperties": False}
# The V2 request's JSON comes from the models that validate it; its $defs
# become the document's components.
_V2_REQUEST = InferRequestHeader.model_json_schema(ref_template="#/components/schemas/{model}")
_COMPONENTS = _V2_REQUEST.pop("$defs")
_V2_TENSOR: Schema = {
    "type": "object", "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string", "enum": [*DATATYPES, BYTES]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "parameters": {"type": "object"},
        "data": {"type": "array", "items": {}},
    },
}
_V2_METADATA: Schema = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "versions": {"type": "array"},
                   "platform": {"type": "string"}, "inputs": {"type": "array"},
                   "outputs": {"type": "array"}},
}


def _json(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _responses(ok: Schema, description: str = "OK") -> dict[str, Any]:
    errors = {code: {"description": text, "content": _json(_ERROR)} for code, text in [
        ("400", "malformed or invalid input"), ("404", "no such model, version or route"),
        ("413", "body, image or batch beyond the limits"), ("415", "unsupported media type"),
        ("503", "no model replica available; retry"),
    ]}
    return {"200": {"description": description, "content": _json(ok)}, **errors}


def _operation(summary: str, ok: Schema, body: dict[str, Any] | None = None,
               parameters: list[Schema] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": _responses(ok)}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": body}
    if parameters:
        operation["parameters"] = parameters
    return operation


def _path_param(name: str, models: list[str]) -> Schema:
    schema = {"name": {"type": "string", "enum": models},
              "label": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"}
              }.get(name, {"type": "string", "pattern": "^[0-9]+$"})
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _operations() -> dict[str, dict[str, Any] | None]:
    """Each route's operation, by route name (``None``: left out of the document)."""
    native_body = {
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {
            "type": "object",
            "properties": {"images": {"type": "array",
                                      "items": {"type": "string", "format": "binary"}}}}},
        **_json({"type": "object", "required": ["instances"],
                 "properties": {"instances": _NUMBERS}}),
    }
    native_query = [
        {"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1}},
        {"name": "scores", "in": "query", "schema": {"type": "boolean"}},
    ]
    predictions = {"type": "object", "properties": {
        "model": {"type": "string"}, "version": {"type": "integer"},
        "predictions": {"type": "array", "items": {"type": "object"}}}}
    tf_predict_body = _json({
        "type": "object",
        "properties": {"signature_name": {"type": "string"},
                       "instances": {"type": "array", "items": {}},
                       "inputs": {}},
        "description": 'exactly one of "instances" (row format) or "inputs" (columnar); '
                       'binary values as {"b64": "..."}',
    })
    tf_examples_body = _json({
        "type": "object",
        "properties": {"signature_name": {"type": "string"},
                       "context": {"type": "object"},
                       "examples": {"type": "array", "items": {"type": "object"}}},
        "required": ["examples"],
        "description": "tf.Example features by name: numbers (with a fraction: float, "
                       'without: int64), strings, {"b64": "..."}, or flat lists of one kind',
    })
    v2_infer_body = {
        **_json(_V2_REQUEST),
        "application/octet-stream": {"schema": {
            "type": "string", "format": "binary",
            "description": "binary tensor data extension: a JSON header of "
                           "Inference-Header-Content-Length bytes, then the tensors' bytes"}},
    }
    status = {"type": "object", "properties": {"model_version_status": {"type": "array"}}}
    anything = {"type": "object"}
    return {
        "healthz": _operation("Liveness of the ingress", anything),
        "readyz": _operation("Every model has a replica answering now", anything),
        "openapi": _operation("This document", anything),
        "native.models": _operation("The served models", anything),
        "native.predict": _operation("Top classes for uploaded images or JSON instances",
                                     predictions, native_body, native_query),
        "tfserving.predict": _operation("TF Serving predict", anything, tf_predict_body),
        "tfserving.classify": _operation(
            "TF Serving classify (signatures whose method is classify)", {
                "type": "object", "properties": {"results": {"type": "array", "items": {
                    "type": "array", "items": {"type": "array"}}}}}, tf_examples_body),
        "tfserving.regress": _operation(
            "TF Serving regress (signatures whose method is regress)", {
                "type": "object", "properties": {"results": {"type": "array", "items": {
                    "type": "number"}}}}, tf_examples_body),
        "tfserving.verb": None,  # any other verb: a 400 naming the three
        "tfserving.status": _operation("TF Serving model status", status),
        "tfserving.metadata": _operation("TF Serving model metadata", anything),
        "v2.server": _operation("V2 server metadata", anything),
        "v2.live": _operation("V2 liveness", anything),
        "v2.ready": _operation("V2 readiness", anything),
        "v2.model": _operation("V2 model metadata", _V2_METADATA),
        "v2.model_ready": _operation("V2 model readiness", anything),
        "v2.infer": _operation("V2 inference (JSON or binary tensors)", {
            "type": "object", "properties": {"model_name": {"type": "string"},
                                             "model_version": {"type": "string"},
                                             "id": {"type": "string"},
                                             "outputs": {"type": "array",
                                                         "items": _V2_TENSOR}}},
            v2_infer_body, [{"name": "Inference-Header-Content-Length", "in": "header",
                             "schema": {"type": "integer", "minimum": 0}}]),
    }


OPERATIONS = _operations()


def _security(auth: AuthArgs) -> tuple[Schema, list[Schema]]:
    """The schemes a token may come by, and the requirement (any one of them)."""
    schemes: Schema = {"bearer": {"type": "http", "scheme": "bearer"}}
    if auth.api_key_header:
        schemes["apiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    return schemes, [{name: []} for name in schemes]


def _secured(operation: dict[str, Any], exempt: bool) -> dict[str, Any]:
    """An operation with auth on: open (no requirement), or one more answer, the 401."""
    if exempt:
        return {**operation, "security": []}
    return {**operation, "responses": {**operation["responses"], "401": {
        "description": "no valid token", "content": _json(_ERROR)}}}


def openapi_document(routes: Sequence[ApiRoute], model_names: list[str],
                     auth: AuthArgs | None = None) -> dict[str, Any]:
    """The document of ``routes`` (the app's routing table); model names are
    the served ones; with ``auth`` on, its token schemes, which every
    operation but the exempt ones requires."""
    secure = auth if auth is not None and auth.enabled else None
    paths: dict[str, Any] = {}
    for route in routes:
        operation = OPERATIONS[route.name]
        if operation is None:
            continue
        params = [_path_param(name, model_names) for name in route.param_convertors]
        operation = {**operation, "parameters": params + operation.get("parameters", [])}
        if secure:
            operation = _secured(operation, secure.exempts(route.path))
        for method in sorted(cast(set[str], route.methods) - {"HEAD"}):  # ApiRoute sets them
            paths.setdefault(route.path, {})[method.lower()] = operation
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "ray-tf-serve", "version": package_version("ray-tf-serve"),
                 "description": "TensorFlow SavedModels on Ray Serve: a native image API, "
                                "TensorFlow Serving's REST API and KServe V2."},
        "paths": paths,
        "components": {"schemas": _COMPONENTS},
    }
    if secure:
        document["components"]["securitySchemes"], document["security"] = _security(secure)
    return document
