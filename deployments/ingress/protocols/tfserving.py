"""TensorFlow Serving's REST API, as its clients call it.

    GET  /v1/models/{name}[/versions/{version}]            model status
    GET  /v1/models/{name}[/versions/{version}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{version}]:predict    row or columnar JSON
    POST /v1/models/{name}[/versions/{version}]:classify   tf.Example features in JSON
    POST /v1/models/{name}[/versions/{version}]:regress    (classify/regress signatures)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse

from deployments.codecs.numbers import version_number
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
from deployments.errors import BadRequest, NotFound, clip
from deployments.ingress.auth import load_error
from deployments.ingress.budget import off_loop
from deployments.ingress.protocols.http import (
    JSONWithNaN,
    parse_json_body,
    pinned,
    read_body,
    resolve,
    with_images,
)
from deployments.ingress.protocols.routes import ApiRoute, model_routes
from deployments.ingress.registry import ModelEndpoint, ModelRegistry
from deployments.signature import ModelMetadata
from deployments.versions import VersionStatus


class TFServingApi:
    def __init__(self, registry: ModelRegistry, limits: InputLimits) -> None:
        self._registry = registry
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
        params = request.path_params
        endpoint = self._registry.get(params["name"])
        return JSONResponse(model_status(await version_statuses(
            endpoint, params.get("version"), params.get("label"))))

    async def metadata(self, request: Request) -> JSONResponse:
        _, meta = await resolve(self._registry, request)
        return JSONResponse(model_metadata(meta))

    async def other_verb(self, request: Request) -> JSONResponse:
        await resolve(self._registry, request)  # an unknown model is a 404 first
        raise BadRequest(f"unknown verb :{request.path_params['verb']}: TF Serving's REST "
                         "API has :predict, :classify and :regress")

    async def predict(self, request: Request) -> JSONResponse:
        endpoint, meta, document = await self._read(request)
        parsed = await off_loop(parse_predict_request, document, meta,
                                         self._limits.max_rows)
        inputs = await with_images(endpoint, meta, parsed.inputs)
        answer = await endpoint.infer(meta, inputs, pinned(request))
        return JSONWithNaN(encode_predict_response(answer.outputs, parsed.columnar))

    async def classify(self, request: Request) -> JSONResponse:
        return JSONWithNaN(encode_classify_response(await self._examples(request, "classify")))

    async def regress(self, request: Request) -> JSONResponse:
        return JSONWithNaN(encode_regress_response(await self._examples(request, "regress")))

    async def _examples(self, request: Request, verb: str) -> dict[str, np.ndarray]:
        """A ``:classify``/``:regress`` call: its examples serialized (off the
        event loop), each one's copy of the context charged to the budget
        before it is made (as gRPC's), and run like any request, batched
        with others."""
        endpoint, meta, document = await self._read(request)
        limits = self._limits
        examples = await off_loop(parse_examples_request, document, meta, verb,
                                  limits.max_rows, limits.max_elements)
        self._registry.budget.take(examples.nbytes, "the serialized examples")
        inputs = examples_input(meta, await off_loop(examples.joined))
        answer = await endpoint.infer(meta, inputs, pinned(request))
        return answer.outputs

    async def _read(self, request: Request) -> tuple[ModelEndpoint, ModelMetadata, Any]:
        """The model, the version and signature the path and body name, and the body."""
        endpoint, meta = await resolve(self._registry, request)
        body = await read_body(request, self._limits.max_body_bytes, self._registry.budget)
        document = await parse_json_body(body, self._registry.budget)
        return endpoint, meta.signature(signature_name(document)), document


async def version_statuses(endpoint: ModelEndpoint, version: str | int | None = None,
                           label: str | None = None) -> list[VersionStatus]:
    """Every version's state; with a version or label, that version's (TF
    Serving answers 404 for one it has never heard of). A load error is as
    the caller may read it (:func:`deployments.ingress.auth.load_error`)."""
    statuses = [replace(s, error=load_error(s.error)) for s in await endpoint.statuses()]
    wanted: int | None
    if label is not None:
        wanted, named = endpoint.labeled(label), label
    elif version is not None:
        wanted = version if isinstance(version, int) else version_number(version)
        named = str(version)
    else:
        return statuses
    picked = [s for s in statuses if s.version == wanted]
    if not picked:
        raise NotFound(f"model {endpoint.name!r} has no version {clip(named)!r} (its "
                       f"versions: {', '.join(str(s.version) for s in statuses) or 'none'})")
    return picked
