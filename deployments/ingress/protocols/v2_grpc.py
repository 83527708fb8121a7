"""KServe V2 over gRPC (``inference.GRPCInferenceService``) through Ray Serve's
gRPC proxy.

The proxy calls the ingress deployment's method named after the RPC with the
request message (:mod:`deployments.ingress.protocols.grpc`); the config enables it
with ``grpc_options`` and :func:`add_servicer`. Errors set a gRPC status code
on the call's context, the way ``tritonclient.grpc`` reports them.
"""

from __future__ import annotations

import sys
from typing import Any, cast

import grpc
from google.protobuf import json_format
from ray.serve.grpc_util import RayServegRPCContext
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc.service_pb2_grpc import add_GRPCInferenceServiceServicer_to_server

from deployments.codecs.v2_grpc import (
    encode_infer_response,
    model_metadata_response,
    parse_infer_request,
)
from deployments.codecs.v2_tensor import model_config
from deployments.errors import NotFound, ServiceUnavailable, Unimplemented
from deployments.ingress.budget import off_loop
from deployments.ingress.protocols import v2
from deployments.ingress.protocols.grpc import GrpcService, Rpc, rpc
from deployments.ingress.request import Target

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


def _model_of(request: Any) -> str:
    """Model RPCs name their model in ``model_name`` (infer) or ``name``."""
    return cast(str, getattr(request, "model_name", None) or getattr(request, "name", ""))


_status = rpc("v2-grpc", _model_of)


class V2GrpcService(GrpcService):
    """The V2 RPCs, mixed into the ingress deployment (method names are the RPCs')."""

    @_status
    async def ServerLive(self, request: pb.ServerLiveRequest,
                         grpc_context: RayServegRPCContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_status
    async def ServerReady(self, request: pb.ServerReadyRequest,
                          grpc_context: RayServegRPCContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self._ready())

    @_status
    async def ModelReady(self, request: pb.ModelReadyRequest,
                         grpc_context: RayServegRPCContext) -> pb.ModelReadyResponse:
        try:
            await self._plane.model_ready(request.name, request.version or None)
        except (ServiceUnavailable, NotFound):  # Triton: unknown is not ready, not an error
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_status
    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             grpc_context: RayServegRPCContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**v2.server_metadata())

    @_status
    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            grpc_context: RayServegRPCContext) -> pb.ModelMetadataResponse:
        meta = await self._plane.resolve(Target(request.name, request.version or None))
        return model_metadata_response(meta, sorted(await self._plane.versions(request.name)))

    @_status
    async def ModelConfig(self, request: pb.ModelConfigRequest,
                          grpc_context: RayServegRPCContext) -> pb.ModelConfigResponse:
        meta = await self._plane.resolve(Target(request.name, request.version or None))
        return pb.ModelConfigResponse(config=json_format.ParseDict(
            model_config(meta, self._limits.max_rows), model_config_pb2.ModelConfig()))

    @_status
    async def ModelInfer(self, request: pb.ModelInferRequest,
                         grpc_context: RayServegRPCContext) -> pb.ModelInferResponse:
        limits = self._limits
        self._take_message(request)
        named = Target(request.model_name, request.model_version or None)
        meta = await self._plane.resolve(named)
        meta.check_input_count(len(request.inputs))
        # Parsing and encoding run off the event loop, as HTTP bodies do.
        parsed = await off_loop(parse_infer_request, request, limits.max_rows,
                                limits.max_elements)
        meta, outputs = await v2.infer(self._plane, named, parsed)
        return await off_loop(encode_infer_response, meta, parsed.id, outputs)


def _unimplemented(method: str) -> Rpc:
    async def refuse(self: GrpcService, request: Any, grpc_context: RayServegRPCContext) -> None:
        raise Unimplemented(f"{method} is not offered here: this server speaks KServe V2's "
                            "core protocol (health, metadata, infer) with the binary tensor "
                            "data and classification extensions, and Triton's model config")

    refuse.__name__ = refuse.__qualname__ = method
    return _status(refuse)


# The rest of the service tritonclient may call (model statistics,
# the repository, shared memory, trace and log settings, streaming): each is
# UNIMPLEMENTED with a reason; a method the ingress lacks would be INTERNAL.
for _method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name:
    if not hasattr(V2GrpcService, _method):
        setattr(V2GrpcService, _method, _unimplemented(_method))
