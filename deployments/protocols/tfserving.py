"""TensorFlow Serving's REST API, as its clients call it.

    GET  /v1/models/{name}[/versions/{version}]            model status
    GET  /v1/models/{name}[/versions/{version}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{version}]:predict    row or columnar JSON
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from deployments.codecs.errors import BadRequest
from deployments.codecs.tensor import parse_json, rows_to_array
from deployments.codecs.tfserving import (
    encode_predict_response,
    model_metadata,
    model_status,
    parse_predict_request,
)
from deployments.config import InputLimits
from deployments.protocols.http import JSONWithNaN, read_body
from deployments.registry import ModelRegistry


class TFServingApi:
    def __init__(self, registry: ModelRegistry, limits: InputLimits) -> None:
        self._registry = registry
        self._limits = limits

    def routes(self) -> list[Route]:
        # The :predict routes first: "{name}" would also match "digits:predict".
        base, version = "/v1/models/{name}", "/v1/models/{name}/versions/{version}"
        return [
            Route(base + ":predict", self.predict, methods=["POST"]),
            Route(version + ":predict", self.predict, methods=["POST"]),
            Route(base + ":{verb}", self.other_verb, methods=["POST"]),
            Route(version + ":{verb}", self.other_verb, methods=["POST"]),
            Route(base, self.status, methods=["GET"]),
            Route(version, self.status, methods=["GET"]),
            Route(base + "/metadata", self.metadata, methods=["GET"]),
            Route(version + "/metadata", self.metadata, methods=["GET"]),
        ]

    async def status(self, request: Request) -> JSONResponse:
        endpoint = self._registry.get(request.path_params["name"])
        version = request.path_params.get("version")
        if version is None:
            return JSONResponse(model_status(list(await endpoint.versions())))
        return JSONResponse(model_status([(await endpoint.version(version)).version]))

    async def metadata(self, request: Request) -> JSONResponse:
        endpoint = self._registry.get(request.path_params["name"])
        meta = await endpoint.version(request.path_params.get("version"))
        return JSONResponse(model_metadata(meta))

    async def other_verb(self, request: Request) -> JSONResponse:
        """``:classify`` and ``:regress`` need tf.Example signatures, which a
        SavedModel exported for ``:predict`` does not have."""
        endpoint = self._registry.get(request.path_params["name"])
        meta = await endpoint.version(request.path_params.get("version"))
        raise BadRequest(f"model {meta.name!r} serves only :predict (signature "
                         f"{meta.signature_name!r}), not :{request.path_params['verb']}")

    async def predict(self, request: Request) -> JSONResponse:
        endpoint = self._registry.get(request.path_params["name"])
        meta = await endpoint.version(request.path_params.get("version"))
        body = await read_body(request, self._limits.max_body_bytes)
        parsed = await asyncio.to_thread(
            lambda: parse_predict_request(parse_json(body), meta.input))
        if parsed.signature_name not in (None, "", meta.signature_name):
            raise BadRequest(f"Serving signature name: {parsed.signature_name!r} not found in "
                             f"signature def (model {meta.name!r} serves "
                             f"{meta.signature_name!r})")
        if parsed.is_binary:
            batch = await endpoint.decode_images(meta, parsed.value)
        else:
            batch = await asyncio.to_thread(rows_to_array, parsed.value, "the input")
        outputs = await endpoint.infer(meta, batch)
        return JSONWithNaN(encode_predict_response(outputs, parsed.columnar))
