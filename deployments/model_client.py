"""How the ingress reaches one model deployment through Ray: metadata asked of
a replica, and coalesced calls whose arrays go into the object store once.

:class:`deployments.registry.ModelEndpoint` works with any object of the
:class:`deployments.registry.ModelClient` shape; this is the one the app
uses. (The tests' in-process client, without Ray, is ``harness.inprocess``.)
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import ray
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle

from deployments.batching import Outputs
from deployments.codecs.errors import ServeError, ServiceUnavailable
from deployments.signature import ModelMetadata

logger = logging.getLogger("ray.serve")

# How long a replica may take to describe the model before it counts as down.
_METADATA_TIMEOUT_S = 10.0

# Pauses before each new try of a call whose model replica died.
_RETRY_DELAYS_S = (0.1, 0.5, 1.0, 2.0)

# The model could not take or finish the call: retrying later may work.
_MODEL_UNAVAILABLE = (RayActorError, ActorUnavailableError, DeploymentUnavailableError,
                      ReplicaUnavailableError)


class RayModelClient:
    """One model deployment's handle, by reference: the replica gets the
    ``ObjectRef`` and reads the object store's buffer, even where Serve would
    otherwise send arguments by value over gRPC (``RAY_SERVE_THROUGHPUT_OPTIMIZED``)."""

    def __init__(self, name: str, handle: DeploymentHandle) -> None:
        self.name = name
        self._handle = handle.options(_by_reference=True)

    async def metadata(self) -> dict[int, ModelMetadata]:
        """Every served version, asked of a replica now: a 503 unless one
        answers within seconds."""
        try:
            return await asyncio.wait_for(self._handle.metadata.remote(),
                                          timeout=_METADATA_TIMEOUT_S)
        except Exception as exc:
            logger.warning("model %r metadata unavailable: %r", self.name, exc)
            raise ServiceUnavailable(f"model {self.name!r} is not available") from exc

    async def call(self, version: int, local: list[np.ndarray],
                   forwarded: list[ray.ObjectRef]) -> list[Outputs | ServeError]:
        """One model call: ``local`` arrays put as one object, ``forwarded``
        objects passed on; each part's answer, local ones first."""
        local_ref = ray.put(local) if local else None
        # Inference has no side effects: a call whose replica died under it is
        # sent again (Serve routes it to a live replica), a few times.
        delays = iter(_RETRY_DELAYS_S)
        while True:
            try:
                return await self._handle.infer_parts.remote(local_ref, forwarded, version)
            except BackPressureError as exc:  # max_queued_requests reached: shed at once
                raise ServiceUnavailable(f"model {self.name!r} is overloaded (its request "
                                         "queue is full); retry shortly") from exc
            except _MODEL_UNAVAILABLE as exc:
                delay = next(delays, None)
                if delay is None:
                    logger.warning("model %r unavailable: %r", self.name, exc)
                    raise ServiceUnavailable(
                        f"no replica of model {self.name!r} could take the request; retry"
                    ) from exc
                logger.info("model %r replica lost (%r); retrying in %.1f s",
                            self.name, exc, delay)
                await asyncio.sleep(delay)
