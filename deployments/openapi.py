"""The OpenAPI 3.0 document of every HTTP route (served at ``/openapi.json``).

Written out by hand from the protocol documents, so it states exactly what
each route takes; model names are listed from the config.
"""

from __future__ import annotations

from importlib.metadata import version as package_version
from typing import Any

Schema = dict[str, Any]

_NUMBERS: Schema = {"type": "array", "items": {}, "description": "nested lists of numbers"}
_ERROR: Schema = {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}}
_B64: Schema = {"type": "object", "required": ["b64"], "properties": {"b64": {"type": "string"}},
                "additionalProperties": False}
_V2_TENSOR: Schema = {
    "type": "object", "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string", "enum": [
            "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
            "FP16", "FP32", "FP64", "BYTES"]},
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


def _path_params(names: list[str], with_version: bool) -> list[Schema]:
    params = [{"name": "name", "in": "path", "required": True,
               "schema": {"type": "string", "enum": names}}]
    if with_version:
        params.append({"name": "version", "in": "path", "required": True,
                       "schema": {"type": "string", "pattern": "^[0-9]+$"}})
    return params


def _model_paths(prefix: str, suffix: str, names: list[str],
                 method: str, operation: dict[str, Any]) -> dict[str, Any]:
    """The same operation on ``{prefix}/{name}{suffix}`` and its version form."""
    paths = {}
    for with_version in (False, True):
        middle = "/{name}/versions/{version}" if with_version else "/{name}"
        params = _path_params(names, with_version) + operation.get("parameters", [])
        paths[prefix + middle + suffix] = {method: {**operation, "parameters": params}}
    return paths


def openapi_document(model_names: list[str]) -> dict[str, Any]:
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
    native = _operation("Top classes for uploaded images or JSON instances", predictions,
                        native_body, native_query)
    tf_predict_body = _json({
        "type": "object",
        "properties": {"signature_name": {"type": "string"},
                       "instances": {"type": "array", "items": {}},
                       "inputs": {}},
        "description": 'exactly one of "instances" (row format) or "inputs" (columnar); '
                       'binary values as {"b64": "..."}',
    })
    v2_infer_body = {
        **_json({"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"}, "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "items": _V2_TENSOR},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}}},
        }}),
        "application/octet-stream": {"schema": {
            "type": "string", "format": "binary",
            "description": "binary tensor data extension: a JSON header of "
                           "Inference-Header-Content-Length bytes, then the tensors' bytes"}},
    }
    v2_infer = _operation("V2 inference (JSON or binary tensors)", {
        "type": "object", "properties": {"model_name": {"type": "string"},
                                         "model_version": {"type": "string"},
                                         "id": {"type": "string"},
                                         "outputs": {"type": "array", "items": _V2_TENSOR}}},
        v2_infer_body, [{"name": "Inference-Header-Content-Length", "in": "header",
                         "schema": {"type": "integer", "minimum": 0}}])
    status = {"type": "object", "properties": {"model_version_status": {"type": "array"}}}
    paths: dict[str, Any] = {
        "/healthz": {"get": _operation("Liveness of the ingress", {"type": "object"})},
        "/readyz": {"get": _operation("Every model has a replica answering now",
                                      {"type": "object"})},
        "/openapi.json": {"get": _operation("This document", {"type": "object"})},
        "/models": {"get": _operation("The served models", {"type": "object"})},
        "/predict": {"post": native},
        **_model_paths("/models", "/predict", model_names, "post", native),
        **_model_paths("/v1/models", ":predict", model_names, "post", _operation(
            "TF Serving predict", {"type": "object"}, tf_predict_body)),
        **_model_paths("/v1/models", "", model_names, "get",
                       _operation("TF Serving model status", status)),
        **_model_paths("/v1/models", "/metadata", model_names, "get",
                       _operation("TF Serving model metadata", {"type": "object"})),
        "/v2": {"get": _operation("V2 server metadata", {"type": "object"})},
        "/v2/health/live": {"get": _operation("V2 liveness", {"type": "object"})},
        "/v2/health/ready": {"get": _operation("V2 readiness", {"type": "object"})},
        **_model_paths("/v2/models", "", model_names, "get",
                       _operation("V2 model metadata", _V2_METADATA)),
        **_model_paths("/v2/models", "/ready", model_names, "get",
                       _operation("V2 model readiness", {"type": "object"})),
        **_model_paths("/v2/models", "/infer", model_names, "post", v2_infer),
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "ray-tf-serve", "version": package_version("ray-tf-serve"),
                 "description": "TensorFlow SavedModels on Ray Serve: a native image API, "
                                "TensorFlow Serving's REST API and KServe V2."},
        "paths": paths,
    }
