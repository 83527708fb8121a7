"""TensorFlow Serving's REST API, as its clients call it.

    GET  /v1/models/{name}[/versions/{version}]            model status
    GET  /v1/models/{name}[/versions/{version}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{version}]:predict    row or columnar JSON
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse

from deployments.codecs.errors import BadRequest
from deployments.codecs.tfserving import (
    encode_predict_response,
    model_metadata,
    model_status,
    parse_predict_request,
)
from deployments.config import InputLimits
from deployments.protocols.http import (
    JSONWithNaN,
    parse_json_body,
    pinned,
    read_body,
    request_timeout,
    resolve,
    with_images,
)
from deployments.protocols.routes import ApiRoute, model_routes
from deployments.registry import ModelRegistry


class TFServingApi:
    def __init__(self, registry: ModelRegistry, limits: InputLimits) -> None:
        self._registry = registry
        self._limits = limits

    def routes(self) -> list[ApiRoute]:
        # The :predict routes first: "{name}" would also match "digits:predict".
        return [
            *model_routes("/v1/models", ":predict", self.predict, "POST", "tfserving.predict",
                          "tfserving"),
            *model_routes("/v1/models", ":{verb}", self.other_verb, "POST", "tfserving.verb",
                          "tfserving"),
            *model_routes("/v1/models", "", self.status, "GET", "tfserving.status",
                          "tfserving"),
            *model_routes("/v1/models", "/metadata", self.metadata, "GET",
                          "tfserving.metadata", "tfserving"),
        ]

    async def status(self, request: Request) -> JSONResponse:
        endpoint = self._registry.get(request.path_params["name"])
        version = request.path_params.get("version")
        if version is None:
            return JSONResponse(model_status(list(await endpoint.versions())))
        return JSONResponse(model_status([(await endpoint.version(version)).version]))

    async def metadata(self, request: Request) -> JSONResponse:
        _, meta = await resolve(self._registry, request)
        return JSONResponse(model_metadata(meta))

    async def other_verb(self, request: Request) -> JSONResponse:
        """``:classify`` and ``:regress`` need tf.Example signatures, which a
        SavedModel exported for ``:predict`` does not have."""
        _, meta = await resolve(self._registry, request)
        raise BadRequest(f"model {meta.name!r} serves only :predict (signature "
                         f"{meta.signature_name!r}), not :{request.path_params['verb']}")

    async def predict(self, request: Request) -> JSONResponse:
        endpoint, meta = await resolve(self._registry, request)
        body = await read_body(request, self._limits.max_body_bytes, self._registry.budget)
        document = await parse_json_body(body, self._registry.budget)
        parsed = await asyncio.to_thread(parse_predict_request, document, meta,
                                         self._limits.max_rows)
        if parsed.signature_name not in (None, "", meta.signature_name):
            raise BadRequest(f"Serving signature name: {parsed.signature_name!r} not found in "
                             f"signature def (model {meta.name!r} serves "
                             f"{meta.signature_name!r})")
        inputs = await with_images(endpoint, meta, parsed.inputs)
        outputs = await endpoint.infer(meta, inputs, pinned(request),
                                       request_timeout(request, self._limits))
        return JSONWithNaN(encode_predict_response(outputs, parsed.columnar))
