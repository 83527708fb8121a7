"""KServe V2 / Open Inference Protocol over HTTP (JSON and binary tensors).

    GET  /v2                                               server metadata
    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}[/versions/{version}]            model metadata
    GET  /v2/models/{name}[/versions/{version}]/ready
    POST /v2/models/{name}[/versions/{version}]/infer

:func:`infer` is the protocol's one inference path, shared with gRPC.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version as package_version

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deployments.codecs.errors import BadRequest
from deployments.codecs.v2 import (
    BYTES,
    EXTENSIONS,
    HEADER_LENGTH,
    InferRequest,
    OutputTensor,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
    select_outputs,
)
from deployments.config import InputLimits
from deployments.protocols.http import read_body
from deployments.registry import ModelRegistry
from deployments.signature import ModelMetadata

SERVER_NAME = "ray-tf-serve"


def server_metadata() -> dict[str, object]:
    return {"name": SERVER_NAME, "version": package_version(SERVER_NAME),
            "extensions": list(EXTENSIONS)}


async def infer(registry: ModelRegistry, name: str, version: str | None,
                request: InferRequest) -> tuple[ModelMetadata, list[OutputTensor]]:
    """One V2 inference: the input checked against the signature (BYTES are
    encoded images for image models), the model run, the outputs selected."""
    endpoint = registry.get(name)
    meta = await endpoint.version(version or None)
    spec = meta.input
    if len(request.inputs) != 1 or request.inputs[0].name != spec.name:
        names = ", ".join(repr(i.name) for i in request.inputs)
        raise BadRequest(f"model {meta.name!r} takes one input, {spec.name!r}; got {names}")
    (tensor,) = request.inputs
    if tensor.datatype == BYTES:
        meta.image_geometry()  # a 400 unless the model takes images
        if len(tensor.shape) not in (1, 2) or tensor.shape[1:] not in ((), (1,)):
            raise BadRequest(f"input {spec.name!r}: BYTES take shape [N] or [N, 1] "
                             f"(one encoded image each), got {list(tensor.shape)}")
        batch = await endpoint.decode_images(meta, tensor.data)
    else:
        batch = tensor.data
    return meta, select_outputs(request, meta, await endpoint.infer(meta, batch))


class V2Api:
    def __init__(self, registry: ModelRegistry, limits: InputLimits) -> None:
        self._registry = registry
        self._limits = limits

    def routes(self) -> list[Route]:
        model, version = "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
        return [
            Route("/v2", self.server, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route(model, self.model_metadata, methods=["GET"]),
            Route(version, self.model_metadata, methods=["GET"]),
            Route(model + "/ready", self.model_ready, methods=["GET"]),
            Route(version + "/ready", self.model_ready, methods=["GET"]),
            Route(model + "/infer", self.infer, methods=["POST"]),
            Route(version + "/infer", self.infer, methods=["POST"]),
        ]

    async def server(self, request: Request) -> JSONResponse:
        return JSONResponse(server_metadata())

    async def live(self, request: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> JSONResponse:
        await self._registry.ready()  # a 503 unless every model answers now
        return JSONResponse({"ready": True})

    async def model_metadata(self, request: Request) -> JSONResponse:
        endpoint = self._registry.get(request.path_params["name"])
        meta = await endpoint.version(request.path_params.get("version"))
        return JSONResponse(model_metadata(meta, sorted(await endpoint.versions())))

    async def model_ready(self, request: Request) -> JSONResponse:
        endpoint = self._registry.get(request.path_params["name"])
        await endpoint.check_ready(request.path_params.get("version"))
        return JSONResponse({"name": endpoint.name, "ready": True})

    async def infer(self, request: Request) -> Response:
        body = await read_body(request, self._limits.max_body_bytes)
        parsed = await asyncio.to_thread(parse_infer_request, body,
                                         request.headers.get(HEADER_LENGTH))
        meta, outputs = await infer(self._registry, request.path_params["name"],
                                    request.path_params.get("version"), parsed)
        content, header_length = await asyncio.to_thread(
            encode_infer_response, meta, parsed.id, outputs)
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(header_length)})
