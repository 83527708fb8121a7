"""TensorFlow Serving's REST API, as its clients call it.

    GET  /v1/models/{name}[/versions/{version}]            model status
    GET  /v1/models/{name}[/versions/{version}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{version}]:predict    row or columnar JSON
    POST /v1/models/{name}[/versions/{version}]:classify   tf.Example features in JSON
    POST /v1/models/{name}[/versions/{version}]:regress    (classify/regress signatures)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployments.codecs.tfserving import (
    encode_classify_response,
    encode_predict_response,
    encode_regress_response,
    examples_input,
    model_metadata,
    model_status,
    parse_examples_request,
    parse_predict_request,
    signature_name,
)
from deployments.config import InputLimits
from deployments.errors import BadRequest
from deployments.ingress.budget import off_loop
from deployments.ingress.dataplane import DataPlane
from deployments.ingress.protocols.http import (
    parse_json_body,
    read_body,
    target,
    with_images,
)
from deployments.ingress.protocols.routes import ApiRoute, model_routes
from deployments.signature import ModelMetadata


class TFServingApi:
    def __init__(self, plane: DataPlane, limits: InputLimits) -> None:
        self._plane = plane
        self._limits = limits

    def routes(self) -> list[ApiRoute]:
        # The verbs first: "{name}" would also match "digits:predict".
        return [
            *model_routes("/v1/models", ":predict", self.predict, "POST", "tfserving.predict",
                          "tfserving", labels=True),
            *model_routes("/v1/models", ":classify", self.classify, "POST",
                          "tfserving.classify", "tfserving", labels=True),
            *model_routes("/v1/models", ":regress", self.regress, "POST",
                          "tfserving.regress", "tfserving", labels=True),
            *model_routes("/v1/models", ":{verb}", self.other_verb, "POST", "tfserving.verb",
                          "tfserving", labels=True),
            *model_routes("/v1/models", "", self.status, "GET", "tfserving.status",
                          "tfserving", labels=True),
            *model_routes("/v1/models", "/metadata", self.metadata, "GET",
                          "tfserving.metadata", "tfserving", labels=True),
        ]

    async def status(self, request: Request) -> JSONResponse:
        return JSONResponse(model_status(await self._plane.statuses(target(request))))

    async def metadata(self, request: Request) -> JSONResponse:
        return JSONResponse(model_metadata(await self._plane.resolve(target(request))))

    async def other_verb(self, request: Request) -> JSONResponse:
        await self._plane.resolve(target(request))  # an unknown model is a 404 first
        raise BadRequest(f"unknown verb :{request.path_params['verb']}: TF Serving's REST "
                         "API has :predict, :classify and :regress")

    async def predict(self, request: Request) -> Response:
        pinned, meta, document = await self._read(request)
        parsed = await off_loop(parse_predict_request, document, meta, self._limits.max_rows)
        answer = await self._plane.infer(meta, with_images(meta, parsed.inputs), pinned)
        return _json(await off_loop(encode_predict_response, answer.outputs, parsed.columnar))

    async def classify(self, request: Request) -> Response:
        return _json(encode_classify_response(await self._examples(request, "classify")))

    async def regress(self, request: Request) -> Response:
        return _json(encode_regress_response(await self._examples(request, "regress")))

    async def _examples(self, request: Request, verb: str) -> dict[str, np.ndarray]:
        """A ``:classify``/``:regress`` call: its examples serialized (off the
        event loop), each one's copy of the context charged to the budget
        before it is made (as gRPC's), and run like any request, batched
        with others."""
        pinned, meta, document = await self._read(request)
        limits = self._limits
        examples = await off_loop(parse_examples_request, document, meta, verb,
                                  limits.max_rows, limits.max_elements)
        self._plane.budget.take(examples.nbytes, "the serialized examples")
        inputs = examples_input(meta, await off_loop(examples.joined))
        return (await self._plane.infer(meta, inputs, pinned)).outputs

    async def _read(self, request: Request) -> tuple[bool, ModelMetadata, Any]:
        """Whether the path pins a version; the version it names, on the
        signature the body names; the body."""
        named = target(request)
        meta = await self._plane.resolve(named)
        body = await read_body(request, self._limits.max_body_bytes, self._plane.budget)
        document = await parse_json_body(body, self._plane.budget)
        return named.pinned, meta.signature(signature_name(document)), document


def _json(content: bytes) -> Response:
    return Response(content, media_type="application/json")
