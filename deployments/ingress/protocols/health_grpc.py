"""gRPC's standard health service (``grpc.health.v1.Health``), which
Kubernetes' gRPC probes and ``grpc_health_probe`` call: TF Serving's
``--enable_grpc_healthcheck_service``, always on here. It is registered with
TF Serving's services (``tfserving_grpc.add_servicer``), on the same port.

``Check`` answers as TF Serving does for the server as a whole (``""``) and
its services (``ModelService``, ``PredictionService``, or their full names):
``SERVING`` while the server runs, whatever its models do, so a liveness
probe never restarts it for one model's trouble (as ``/healthz``). For
KServe V2's service (``inference.GRPCInferenceService``) it answers as V2's
``ServerReady`` and ``/readyz``: ``SERVING`` once every model has a replica
that answers now, else ``NOT_SERVING`` (a readiness probe). Another name is
``NOT_FOUND``, as the health protocol says.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ray.serve.grpc_util import RayServegRPCContext

from deployments.errors import NotFound, Unimplemented, clip
from deployments.ingress.protocols.grpc import GrpcService, rpc

# Serving while the server runs, as TF Serving sets them once at start.
LIVE = frozenset({"", "ModelService", "PredictionService", "tensorflow.serving.ModelService",
                  "tensorflow.serving.PredictionService"})
# Serving once every model answers (V2's ServerReady, /readyz).
READY = "inference.GRPCInferenceService"


def add_servicer(servicer: Any, server: grpc.Server) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)


_status = rpc("grpc-health", lambda request: "")
_Status = health_pb2.HealthCheckResponse.ServingStatus


class HealthGrpcService(GrpcService):
    """The health RPCs, mixed into the ingress deployment."""

    @_status
    async def Check(self, request: health_pb2.HealthCheckRequest,
                    grpc_context: RayServegRPCContext) -> health_pb2.HealthCheckResponse:
        if request.service in LIVE:
            return health_pb2.HealthCheckResponse(status=_Status.SERVING)
        if request.service != READY:
            raise NotFound(f"unknown service {clip(request.service)!r}")
        return health_pb2.HealthCheckResponse(
            status=_Status.SERVING if await self._ready() else _Status.NOT_SERVING)

    @_status
    async def Watch(self, request: health_pb2.HealthCheckRequest,
                    grpc_context: RayServegRPCContext) -> None:
        raise Unimplemented("grpc.health.v1.Health/Watch is not offered here: poll Check")
