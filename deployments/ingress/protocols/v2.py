"""KServe V2 / Open Inference Protocol over HTTP (JSON and binary tensors).

    GET  /v2                                               server metadata
    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}[/versions/{version}]            model metadata
    GET  /v2/models/{name}[/versions/{version}]/ready
    POST /v2/models/{name}[/versions/{version}]/infer

:func:`infer` is the protocol's one inference path, shared with gRPC.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version as package_version
from typing import cast

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployments.codecs.numbers import decimal_count
from deployments.codecs.v2_json import HEADER_LENGTH, encode_infer_response, parse_infer_request
from deployments.codecs.v2_tensor import (
    BYTES,
    EXTENSIONS,
    InferRequest,
    OutputTensor,
    model_metadata,
    select_outputs,
)
from deployments.config import InputLimits
from deployments.errors import BadRequest
from deployments.ingress.budget import JSON_EXPANSION, off_loop
from deployments.ingress.protocols.http import read_body, resolve
from deployments.ingress.protocols.routes import ApiRoute, model_routes
from deployments.ingress.registry import ModelEndpoint, ModelRegistry
from deployments.signature import STRING, ModelMetadata, TensorSpec, check_input_names

SERVER_NAME = "ray-tf-serve"


def server_metadata() -> dict[str, object]:
    return {"name": SERVER_NAME, "version": package_version(SERVER_NAME),
            "extensions": list(EXTENSIONS)}


async def decode_image_tensor(endpoint: ModelEndpoint, meta: ModelMetadata,
                              shape: tuple[int, ...], blobs: Sequence[bytes]) -> np.ndarray:
    """A tensor of encoded images for the image input (V2 BYTES, TF Serving
    gRPC strings), decoded into the model's input batch."""
    if len(shape) not in (1, 2) or shape[1:] not in ((), (1,)):
        raise BadRequest(f"input {meta.image_input!r}: encoded images take shape [N] or "
                         f"[N, 1] (one image each), got {list(shape)}")
    return await endpoint.decode_images(meta, blobs)


async def infer(registry: ModelRegistry, name: str, version: str | None,
                request: InferRequest) -> tuple[ModelMetadata, list[OutputTensor]]:
    """One V2 inference: every input by name (BYTES are encoded images for the
    image input, strings for string inputs), the model run, the outputs
    selected."""
    endpoint, meta = await registry.resolve(name, version or None)
    meta = meta.signature(request.signature_name)
    names = [tensor.name for tensor in request.inputs]
    if len(set(names)) != len(names):
        raise BadRequest(f"an input is given twice: {', '.join(map(repr, names))}")
    check_input_names(dict.fromkeys(names), meta, "the request")
    inputs: dict[str, np.ndarray] = {}
    for tensor in request.inputs:  # (numeric data is an array, BYTES data a list)
        if tensor.datatype != BYTES:
            inputs[tensor.name] = cast(np.ndarray, tensor.data)
        elif tensor.name == meta.image_input:
            inputs[tensor.name] = await decode_image_tensor(endpoint, meta, tensor.shape,
                                                            cast(list[bytes], tensor.data))
        elif (spec := meta.spec(tensor.name)) is not None and spec.dtype == STRING:
            strings = np.empty(len(tensor.data), dtype=object)
            strings[:] = tensor.data
            inputs[tensor.name] = strings.reshape(tensor.shape)
        else:
            meta.image_spec()  # a 400 naming the inputs when the model takes no images
            # (the names were checked: the model takes this input)
            raise BadRequest(f"input {tensor.name!r} is {cast(TensorSpec, spec).describe()}, "
                             "not BYTES")
    meta, outputs = await endpoint.infer(meta, inputs, bool(version))
    return meta, select_outputs(request, meta, outputs)  # as the version that answered


class V2Api:
    def __init__(self, registry: ModelRegistry, limits: InputLimits) -> None:
        self._registry = registry
        self._limits = limits

    def routes(self) -> list[ApiRoute]:
        return [
            ApiRoute("/v2", self.server, "GET", "v2.server", "v2"),
            ApiRoute("/v2/health/live", self.live, "GET", "v2.live", "v2"),
            ApiRoute("/v2/health/ready", self.ready, "GET", "v2.ready", "v2"),
            *model_routes("/v2/models", "", self.model_metadata, "GET", "v2.model", "v2"),
            *model_routes("/v2/models", "/ready", self.model_ready, "GET", "v2.model_ready",
                          "v2"),
            *model_routes("/v2/models", "/infer", self.infer, "POST", "v2.infer", "v2"),
        ]

    async def server(self, request: Request) -> JSONResponse:
        return JSONResponse(server_metadata())

    async def live(self, request: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> JSONResponse:
        await self._registry.ready()  # a 503 unless every model answers now
        return JSONResponse({"ready": True})

    async def model_metadata(self, request: Request) -> JSONResponse:
        endpoint, meta = await resolve(self._registry, request)
        return JSONResponse(model_metadata(meta, sorted(await endpoint.versions())))

    async def model_ready(self, request: Request) -> JSONResponse:
        endpoint = self._registry.get(request.path_params["name"])
        await endpoint.check_ready(request.path_params.get("version"))
        return JSONResponse({"name": endpoint.name, "ready": True})

    async def infer(self, request: Request) -> Response:
        limits, budget = self._limits, self._registry.budget
        body = await read_body(request, limits.max_body_bytes, budget)
        header_length = request.headers.get(HEADER_LENGTH)
        json_bytes = min(decimal_count(header_length or "") or len(body), len(body))
        budget.take(json_bytes * JSON_EXPANSION, "parsing the JSON header")
        _, meta = await resolve(self._registry, request)
        parsed = await off_loop(parse_infer_request, body, header_length, limits.max_rows,
                                limits.max_elements, meta.check_input_count)
        meta, outputs = await infer(self._registry, request.path_params["name"],
                                    request.path_params.get("version"), parsed)
        content, response_header_length = await off_loop(
            encode_infer_response, meta, parsed.id, outputs)
        if response_header_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(response_header_length)})
