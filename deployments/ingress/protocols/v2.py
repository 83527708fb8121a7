"""KServe V2 / Open Inference Protocol over HTTP (JSON and binary tensors).

    GET  /v2                                               server metadata
    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}[/versions/{version}]            model metadata
    GET  /v2/models/{name}[/versions/{version}]/ready
    GET  /v2/models/{name}[/versions/{version}]/config     Triton's model configuration
    POST /v2/models/{name}[/versions/{version}]/infer

:func:`infer` is the protocol's one inference path, shared with gRPC
(``v2_grpc.py``).
"""

from __future__ import annotations

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
    model_config,
    model_metadata,
    select_outputs,
)
from deployments.config import InputLimits
from deployments.errors import BadRequest
from deployments.ingress.budget import JSON_EXPANSION, off_loop
from deployments.ingress.dataplane import DataPlane
from deployments.ingress.protocols.http import read_body, target
from deployments.ingress.protocols.routes import ApiRoute, model_routes
from deployments.ingress.request import EncodedImages, RequestInputs, Target
from deployments.signature import STRING, ModelMetadata, TensorSpec, check_input_names

SERVER_NAME = "ray-tf-serve"


def server_metadata() -> dict[str, object]:
    return {"name": SERVER_NAME, "version": package_version(SERVER_NAME),
            "extensions": list(EXTENSIONS)}


def infer_inputs(meta: ModelMetadata, request: InferRequest) -> RequestInputs:
    """A V2 request's tensors as the data plane takes them, by name: BYTES
    are encoded images for the image input, strings for string inputs."""
    names = [tensor.name for tensor in request.inputs]
    if len(set(names)) != len(names):
        raise BadRequest(f"an input is given twice: {', '.join(map(repr, names))}")
    check_input_names(dict.fromkeys(names), meta, "the request")
    inputs: dict[str, np.ndarray | EncodedImages] = {}
    for tensor in request.inputs:  # (numeric data is an array, BYTES data a list)
        if tensor.datatype != BYTES:
            inputs[tensor.name] = cast(np.ndarray, tensor.data)
        elif tensor.name == meta.image_input:
            inputs[tensor.name] = EncodedImages(cast(list[bytes], tensor.data), tensor.shape)
        elif (spec := meta.spec(tensor.name)) is not None and spec.dtype == STRING:
            strings = np.empty(len(tensor.data), dtype=object)
            strings[:] = tensor.data
            inputs[tensor.name] = strings.reshape(tensor.shape)
        else:
            meta.image_spec()  # a 400 naming the inputs when the model takes no images
            # (the names were checked: the model takes this input)
            raise BadRequest(f"input {tensor.name!r} is {cast(TensorSpec, spec).describe()}, "
                             "not BYTES")
    return inputs


async def infer(plane: DataPlane, named: Target, request: InferRequest
                ) -> tuple[ModelMetadata, list[OutputTensor]]:
    """One V2 inference (HTTP or gRPC) on the version ``named``, the
    signature the request names: the outputs it asks for, of the version
    that answered."""
    meta = (await plane.resolve(named)).signature(request.signature_name)
    meta, outputs = await plane.infer(meta, infer_inputs(meta, request), named.pinned)
    return meta, select_outputs(request, meta, outputs)


class V2Api:
    def __init__(self, plane: DataPlane, limits: InputLimits) -> None:
        self._plane = plane
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
            *model_routes("/v2/models", "/config", self.model_config, "GET", "v2.model_config",
                          "v2"),
        ]

    async def server(self, request: Request) -> JSONResponse:
        return JSONResponse(server_metadata())

    async def live(self, request: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> JSONResponse:
        await self._plane.ready()  # a 503 unless every model answers now
        return JSONResponse({"ready": True})

    async def model_metadata(self, request: Request) -> JSONResponse:
        named = target(request)
        meta = await self._plane.resolve(named)
        return JSONResponse(model_metadata(meta, sorted(await self._plane.versions(named.model))))

    async def model_config(self, request: Request) -> JSONResponse:
        meta = await self._plane.resolve(target(request))
        return JSONResponse(model_config(meta, self._limits.max_rows))

    async def model_ready(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        await self._plane.model_ready(name, request.path_params.get("version"))
        return JSONResponse({"name": name, "ready": True})

    async def infer(self, request: Request) -> Response:
        limits, budget = self._limits, self._plane.budget
        body = await read_body(request, limits.max_body_bytes, budget)
        header_length = request.headers.get(HEADER_LENGTH)
        json_bytes = min(decimal_count(header_length or "") or len(body), len(body))
        budget.take(json_bytes * JSON_EXPANSION, "parsing the JSON header")
        named = target(request)
        meta = await self._plane.resolve(named)
        parsed = await off_loop(parse_infer_request, body, header_length, limits.max_rows,
                                limits.max_elements, meta.check_input_count)
        meta, outputs = await infer(self._plane, named, parsed)
        content, response_header_length = await off_loop(
            encode_infer_response, meta, parsed.id, outputs)
        if response_header_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(response_header_length)})
