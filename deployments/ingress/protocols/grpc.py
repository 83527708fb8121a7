"""What the app's gRPC services share (KServe V2, TF Serving), through Ray
Serve's gRPC proxy: the proxy calls the ingress deployment's method named
after the RPC with the request message. Errors set a gRPC status code and
our message on the call's context; every call is counted by its code.

A call is bounded by ``request_timeout_s`` (one that waits for models to
load, by the client's deadline only), or by less when the client sends
``x-request-timeout-seconds`` metadata: the proxy passes the client's gRPC
deadline on only by cancelling the call once it passes (gRPC consumes the
``grpc-timeout`` header, and Serve's context carries no deadline).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from ray.serve.grpc_util import RayServegRPCContext

from deployments.config import InputLimits
from deployments.errors import PayloadTooLarge, ServeError, ServiceUnavailable
from deployments.ingress.auth import Gate
from deployments.ingress.dataplane import DataPlane
from deployments.ingress.deadline import TIMEOUT_HEADER, DeadlinePassed, deadline, request_timeout
from deployments.ingress.request_id import (
    FORCE_LOG_HEADER,
    REQUEST_ID_HEADER,
    forced,
    request_id,
    request_scope,
)
from deployments.metrics import IngressMetrics, arrival

logger = logging.getLogger("ray.serve")

STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
                413: grpc.StatusCode.RESOURCE_EXHAUSTED,
                415: grpc.StatusCode.INVALID_ARGUMENT, 501: grpc.StatusCode.UNIMPLEMENTED,
                503: grpc.StatusCode.UNAVAILABLE}


class GrpcService:
    """What a gRPC mixin of the ingress deployment reads off it."""

    _plane: DataPlane
    _limits: InputLimits
    _metrics: IngressMetrics
    _gate: Gate

    def _take_message(self, message: Message) -> None:
        """A 413 for a message over ``max_body_bytes`` (as an HTTP body), else
        its size held against the ingress's memory budget."""
        limits = self._limits
        size = message.ByteSize()
        if size > limits.max_body_bytes:
            raise PayloadTooLarge(f"request is {size} bytes, the limit is "
                                  f"{limits.max_body_bytes}")
        self._plane.budget.take(size, "the request message")

    async def _ready(self) -> bool:
        """Whether every model has a replica that answers now: what a readiness
        RPC answers (probes poll it: an answer, not an error)."""
        try:
            await self._plane.ready()
        except ServiceUnavailable:
            return False
        return True


Rpc = Callable[[Any, Any, RayServegRPCContext], Awaitable[Any]]


class GrpcFailure(ServeError):
    """An RPC's failure with its own gRPC status code (where no HTTP status
    names it: TF Serving's ``UNKNOWN``, for one)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def rpc(protocol: str, model_of: Callable[[Any], str],
        bounded: bool = True) -> Callable[[Rpc], Rpc]:
    """An RPC method bounded by its deadline (only the client's, not
    ``request_timeout_s``, unless ``bounded``), that turns our errors into
    gRPC status codes with their message (``DEADLINE_EXCEEDED`` past the
    client's deadline) and counts the call under ``protocol``, for the model
    ``model_of(request)`` names; a call without a valid token (when auth is
    on) is refused first. (Serve passes ``grpc_context`` to methods whose
    signature names it.)"""

    def decorate(method: Rpc) -> Rpc:
        @functools.wraps(method)
        async def call(self: GrpcService, request: Any,
                       grpc_context: RayServegRPCContext) -> Any:
            code = grpc.StatusCode.INTERNAL
            metadata = dict(grpc_context.invocation_metadata())
            asked = metadata.get(TIMEOUT_HEADER)
            rid = request_id(metadata.get(REQUEST_ID_HEADER), grpc_context.request_id())
            _trail_request_id(grpc_context, rid)
            try:
                with arrival(), request_scope(rid, protocol, forced(
                        metadata.get(FORCE_LOG_HEADER))), \
                        self._gate.rpc(method.__name__, grpc_context), \
                        self._plane.budget.request():
                    async with deadline(*request_timeout(
                            asked, self._limits if bounded else None)):
                        answer = await method(self, request, grpc_context)
                code = grpc.StatusCode.OK
                return answer
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except ServeError as exc:
                if isinstance(exc, GrpcFailure):
                    code = exc.code
                elif isinstance(exc, DeadlinePassed) and exc.clients:
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                else:
                    code = STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL)
                grpc_context.set_code(code)
                grpc_context.set_details(exc.message)
                raise
            except Exception:
                logger.exception("unhandled error in gRPC %s", method.__name__)
                grpc_context.set_code(code)
                grpc_context.set_details("internal server error")
                raise
            finally:
                self._metrics.count(model_of(request), protocol, code.name)

        return call

    return decorate


def _trail_request_id(grpc_context: RayServegRPCContext, rid: str) -> None:
    """The request's id as ``x-request-id`` trailing metadata, on every answer
    (Serve keeps its own ``request_id`` entry; others set before are kept)."""
    kept = [(k, v) for k, v in grpc_context.trailing_metadata()
            if k not in ("request_id", REQUEST_ID_HEADER)]
    grpc_context.set_trailing_metadata([*kept, (REQUEST_ID_HEADER, rid)])
