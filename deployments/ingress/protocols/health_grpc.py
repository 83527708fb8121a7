"""gRPC's standard health service (``grpc.health.v1.Health``), which
Kubernetes' gRPC probes and ``grpc_health_probe`` call: TF Serving's
``--enable_grpc_healthcheck_service``, always on here. It is registered with
TF Serving's services (``tfserving_grpc.add_servicer``), on the same port.

``Check`` answers ``SERVING`` once every model has a replica that answers now
(TF Serving opens its port only when its models have loaded), else
``NOT_SERVING``; for the services TF Serving names (``ModelService``,
``PredictionService``), their full names, KServe V2's, and the server as a
whole (``""``). Another name is ``NOT_FOUND``, as the health protocol says.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ray.serve.grpc_util import RayServegRPCContext

from deployments.errors import NotFound, ServiceUnavailable, Unimplemented, clip
from deployments.ingress.protocols.grpc import GrpcService, rpc

SERVICES = frozenset({"", "ModelService", "PredictionService",
                      "tensorflow.serving.ModelService", "tensorflow.serving.PredictionService",
                      "inference.GRPCInferenceService"})


def add_servicer(servicer: Any, server: grpc.Server) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)


_status = rpc("grpc-health", lambda request: "")
_Status = health_pb2.HealthCheckResponse.ServingStatus


class HealthGrpcService(GrpcService):
    """The health RPCs, mixed into the ingress deployment."""

    @_status
    async def Check(self, request: health_pb2.HealthCheckRequest,
                    grpc_context: RayServegRPCContext) -> health_pb2.HealthCheckResponse:
        if request.service not in SERVICES:
            raise NotFound(f"unknown service {clip(request.service)!r}")
        try:
            await self._plane.ready()
        except ServiceUnavailable:  # probes poll: an answer, not an error
            return health_pb2.HealthCheckResponse(status=_Status.NOT_SERVING)
        return health_pb2.HealthCheckResponse(status=_Status.SERVING)

    @_status
    async def Watch(self, request: health_pb2.HealthCheckRequest,
                    grpc_context: RayServegRPCContext) -> None:
        raise Unimplemented("grpc.health.v1.Health/Watch is not offered here: poll Check")
