"""How the ingress reaches one model deployment through Ray: metadata asked of
a replica, and coalesced calls whose arrays go into the object store once.

The data plane works with any object of the
:class:`deployments.ingress.registry.ModelClient` shape; this is the one the app
uses. (The tests' in-process client, without Ray, is ``harness.inprocess``.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    ObjectStoreFullError,
    RayActorError,
)
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from deployments.errors import ServeError, ServiceUnavailable
from deployments.ingress.dispatch import ReplicaDied
from deployments.pipeline_plan import Step
from deployments.signature import ModelMetadata
from deployments.types import Inputs, Outputs
from deployments.versions import VersionStatus

logger = logging.getLogger("ray.serve")

T = TypeVar("T")

# How long a replica may take to describe the model before it counts as down.
_METADATA_TIMEOUT_S = 10.0

# Pauses before each new try of a call whose model replica died.
_RETRY_DELAYS_S = (0.1, 0.5, 1.0, 2.0)

# No live replica took the call (or Ray cannot tell): sending it again is safe.
_RETRYABLE = (ActorUnavailableError, DeploymentUnavailableError, ReplicaUnavailableError,
              RayActorError)

# How Ray says a replica was stopped on purpose (a redeploy, `ray.kill`), or
# went down with its node (GCS's message when a node is lost).
_NOT_ITS_FAULT = ("killed by `ray.kill`", "its node has died")

# Replicas remembered as dead, to tell calls sent to one already gone.
_DEAD_REMEMBERED = 64


class RayModelClient:
    """One model deployment's handle, by reference: the replica gets the
    ``ObjectRef`` and reads the object store's buffer, even where Serve would
    otherwise send arguments by value over gRPC (``RAY_SERVE_THROUGHPUT_OPTIMIZED``)."""

    def __init__(self, name: str, handle: DeploymentHandle) -> None:
        self.name = name
        self._handle = handle.options(_by_reference=True)
        self._dead: dict[str, float] = {}  # replica actor id → when its death was heard

    async def metadata(self) -> dict[int, ModelMetadata]:
        """Every served version, asked of a replica now: a 503 unless one
        answers within seconds."""
        return await self._ask("metadata")

    async def statuses(self) -> list[VersionStatus]:
        """Every version's state, asked of a replica now (a 503 unless one answers)."""
        return await self._ask("statuses")

    async def _ask(self, method: str) -> Any:
        try:
            return await asyncio.wait_for(getattr(self._handle, method).remote(),
                                          timeout=_METADATA_TIMEOUT_S)
        except Exception as exc:
            logger.warning("model %r %s unavailable: %r", self.name, method, exc)
            raise ServiceUnavailable(f"model {self.name!r} is not available") from exc

    async def call(self, version: int, local: list[Inputs],
                   forwarded: list[dict[str, ray.ObjectRef]],
                   isolated: bool = False,
                   signature: str | None = None) -> list[Outputs | ServeError]:
        """One model call: ``local`` arrays put as one object, ``forwarded``
        objects passed on; each part's answer, local ones first (sent again
        as :meth:`retrying` says)."""
        local_ref = self.put(local)
        return await self.retrying(lambda: self._handle.infer_parts.remote(
            local_ref, forwarded, version, isolated, signature))

    @staticmethod
    def put(local: list[Inputs]) -> ray.ObjectRef | None:
        """A call's arrays as one object (none: nothing to put); a 503 while
        the object store is full."""
        try:
            return ray.put(local) if local else None
        except ObjectStoreFullError as exc:
            raise ServiceUnavailable("the object store is full; retry shortly") from exc

    def step(self, step: Step, isolated: bool, request: ray.ObjectRef | None,
             forwarded: list[dict[str, ray.ObjectRef]],
             *upstream: DeploymentResponse) -> DeploymentResponse:
        """A pipeline step, sent now: Serve routes it once the ``upstream``
        answers exist, and the replica reads them from the object store."""
        return cast(DeploymentResponse,  # not a stream: a DeploymentResponse
                    self._handle.infer_step.remote(step, isolated, request, forwarded, *upstream))

    async def retrying(self, send: Callable[[], Awaitable[T]], name: str | None = None) -> T:
        """``send()``'s answer. Inference has no side effects, so a call that
        no live replica took is sent again (a few times; Serve routes it to a
        live replica), and so is one whose replica was stopped or lost its
        node. A call whose replica died while holding it for any other reason
        raises ``ReplicaDied``: it may be what killed the replica
        (``dispatch.Dispatcher`` decides). ``name``: what messages call the model
        (a pipeline's calls are its steps' chain)."""
        name = name or self.name
        delays = iter(_RETRY_DELAYS_S)
        while True:
            sent_at = time.monotonic()
            try:
                return await send()
            except BackPressureError as exc:  # max_queued_requests reached: shed at once
                raise ServiceUnavailable(f"model {name!r} is overloaded (its request "
                                         "queue is full); retry shortly") from exc
            except Exception as exc:
                died = _death(exc)
                if died is None and not isinstance(exc, _RETRYABLE):
                    raise
                if died is not None and not self._not_its_fault(died, sent_at):
                    logger.warning("model %r replica died holding a call: %s", name, died)
                    raise ReplicaDied(str(died)) from exc
                error = exc
            delay = next(delays, None)
            if delay is None:
                logger.warning("model %r unavailable: %r", name, error)
                raise ServiceUnavailable(
                    f"no replica of model {name!r} could take the request; retry"
                ) from error
            logger.info("model %r replica lost (%r); retrying in %.1f s", name, error, delay)
            await asyncio.sleep(delay)

    def _not_its_fault(self, exc: ActorDiedError, sent_at: float) -> bool:
        """Whether a replica's death says nothing about the call: the replica
        was stopped (``ray.kill``, a redeploy), preempted or lost with its
        node, or was known dead before the call was sent (Serve had not yet
        heard). The first report of a death dates it: later reports (every
        call it held sends one) do not move it."""
        known = self._dead.setdefault(exc.actor_id, time.monotonic())
        while len(self._dead) > _DEAD_REMEMBERED:
            self._dead.pop(next(iter(self._dead)))
        if known < sent_at:
            return True
        message = str(exc)
        return exc.preempted or any(reason in message for reason in _NOT_ITS_FAULT)


def _death(exc: BaseException) -> ActorDiedError | None:
    """The replica death behind a failed call: its own, or, for a pipeline's
    step, an upstream step's (Serve wraps that in a ``RayServeException``)."""
    if isinstance(exc, ActorDiedError):
        return exc
    cause = exc.__cause__
    return cause if isinstance(cause, ActorDiedError) else None
