"""KServe V2 over gRPC (``inference.GRPCInferenceService``) through Ray Serve's
gRPC proxy.

The proxy calls the ingress deployment's method named after the RPC with the
request message; the config enables it with ``grpc_options`` and
:func:`add_servicer`. Errors set a gRPC status code on the call's context, the
way ``tritonclient.grpc`` reports them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from ray.serve.grpc_util import RayServegRPCContext
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc.service_pb2_grpc import add_GRPCInferenceServiceServicer_to_server

from deployments.codecs.errors import PayloadTooLarge, ServeError, ServiceUnavailable
from deployments.codecs.v2_grpc import (
    encode_infer_response,
    model_metadata_response,
    parse_infer_request,
)
from deployments.config import InputLimits
from deployments.metrics import IngressMetrics, arrival
from deployments.protocols import v2
from deployments.registry import ModelRegistry

logger = logging.getLogger("ray.serve")

# The generated classes name their modules after the .proto files
# ("grpc_service_pb2"), which are not importable by those names. Serve's gRPC
# proxy pickles each request for the replica, and pickle finds a class by its
# module: without these aliases it fails with PicklingError. Both the proxy
# (through add_servicer) and the ingress replica import this module.
sys.modules.setdefault("grpc_service_pb2", pb)
sys.modules.setdefault("model_config_pb2", model_config_pb2)


def add_servicer(servicer: Any, server: grpc.Server) -> None:
    """For ``grpc_options.grpc_servicer_functions``: tritonclient's generated
    registration, reached through this module so that the proxy process that
    imports it gets the aliases above."""
    add_GRPCInferenceServiceServicer_to_server(servicer, server)

_STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
                 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
                 415: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE}

Rpc = Callable[[Any, Any, RayServegRPCContext], Awaitable[Any]]


def _status(rpc: Rpc) -> Rpc:
    """Turn our errors into gRPC status codes with their message, and count
    the call by its code. (Serve passes ``grpc_context`` to methods whose
    signature names it.)"""

    @functools.wraps(rpc)
    async def call(self: V2GrpcService, request: Any,
                   grpc_context: RayServegRPCContext) -> Any:
        code = grpc.StatusCode.INTERNAL
        try:
            with arrival(), self._registry.budget.request():
                answer = await rpc(self, request, grpc_context)
            code = grpc.StatusCode.OK
            return answer
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except ServeError as exc:
            code = _STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL)
            grpc_context.set_code(code)
            grpc_context.set_details(exc.message)
            raise
        except Exception:
            logger.exception("unhandled error in gRPC %s", rpc.__name__)
            grpc_context.set_code(code)
            grpc_context.set_details("internal server error")
            raise
        finally:
            # Model RPCs name their model in `model_name` (infer) or `name`.
            name = getattr(request, "model_name", None) or getattr(request, "name", "")
            self._metrics.count(name, "v2-grpc", code.name)

    return call


class V2GrpcService:
    """The V2 RPCs, mixed into the ingress deployment (method names are the RPCs')."""

    _registry: ModelRegistry
    _limits: InputLimits
    _metrics: IngressMetrics

    @_status
    async def ServerLive(self, request: pb.ServerLiveRequest,
                         grpc_context: RayServegRPCContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_status
    async def ServerReady(self, request: pb.ServerReadyRequest,
                          grpc_context: RayServegRPCContext) -> pb.ServerReadyResponse:
        try:
            await self._registry.ready()
        except ServiceUnavailable:  # clients poll until ready: an answer, not an error
            return pb.ServerReadyResponse(ready=False)
        return pb.ServerReadyResponse(ready=True)

    @_status
    async def ModelReady(self, request: pb.ModelReadyRequest,
                         grpc_context: RayServegRPCContext) -> pb.ModelReadyResponse:
        endpoint = self._registry.get(request.name)
        try:
            await endpoint.check_ready(request.version or None)  # 404 if unknown
        except ServiceUnavailable:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_status
    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             grpc_context: RayServegRPCContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**v2.server_metadata())

    @_status
    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            grpc_context: RayServegRPCContext) -> pb.ModelMetadataResponse:
        endpoint, meta = await self._registry.resolve(request.name, request.version or None)
        return model_metadata_response(meta, sorted(await endpoint.versions()))

    @_status
    async def ModelInfer(self, request: pb.ModelInferRequest,
                         grpc_context: RayServegRPCContext) -> pb.ModelInferResponse:
        limits = self._limits
        size = request.ByteSize()
        if size > limits.max_body_bytes:
            raise PayloadTooLarge(f"request is {size} bytes, the limit is "
                                  f"{limits.max_body_bytes}")
        self._registry.budget.take(size, "the request message")
        # Parsing and encoding run off the event loop, as HTTP bodies do.
        parsed = await asyncio.to_thread(parse_infer_request, request, limits.max_rows,
                                         limits.max_elements)
        meta, outputs = await v2.infer(self._registry, request.model_name,
                                       request.model_version, parsed)
        return await asyncio.to_thread(encode_infer_response, meta, parsed.id, outputs)
