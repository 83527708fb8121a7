"""The app's models by name, as every protocol sees them.

Each model is its own deployment; a :class:`ModelEndpoint` holds its handle
and its cached metadata, and owns the one data path into it: check the batch
against the signature, coalesce it with the other requests waiting for the
same version (``deployments.coalescing``), ``ray.put`` their arrays once into
the object store, and hand the ``ObjectRef`` to a model replica. A caller's
own ``ObjectRef`` is checked in place and forwarded as it is.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle

from deployments.batching import Outputs
from deployments.coalescing import Coalescer, CoalesceSettings
from deployments.codecs.errors import BadRequest, NotFound, ServeError, ServiceUnavailable
from deployments.codecs.image import decode_images
from deployments.config import InputLimits
from deployments.metrics import IngressMetrics, arrival_time
from deployments.signature import ModelMetadata, check_batch, check_size

logger = logging.getLogger("ray.serve")

# How long the versions and signatures learned from a model replica are trusted.
_METADATA_TTL_S = 5.0
# How long a model that could not be asked stays unavailable before it is asked again.
_UNAVAILABLE_TTL_S = 1.0

# Pauses before each new try of a request whose model replica died.
_RETRY_DELAYS_S = (0.1, 0.5, 1.0, 2.0)

# The model could not take or finish the request: retrying later may work.
_MODEL_UNAVAILABLE = (RayActorError, ActorUnavailableError, DeploymentUnavailableError,
                      ReplicaUnavailableError)

# Rows per coalesced call while the model's own max_batch_size is not known.
_DEFAULT_COALESCE_ROWS = 32


@dataclass(frozen=True)
class _Part:
    """One request's checked batch: an array to put with its batch-mates, or a
    caller's own object to forward as it is."""

    rows: int
    array: np.ndarray | None = None
    ref: ray.ObjectRef | None = None
    arrived: float | None = None  # for the preprocess-time metric


class ModelEndpoint:
    """One model deployment: its versions' metadata and the way in."""

    def __init__(self, name: str, handle: DeploymentHandle, limits: InputLimits,
                 metrics: IngressMetrics) -> None:
        self.name = name
        self._metrics = metrics
        # By reference: the model replica gets the ObjectRef and reads the
        # object store's buffer, even where Serve would otherwise send request
        # arguments by value over gRPC (RAY_SERVE_THROUGHPUT_OPTIMIZED=1).
        self._handle = handle.options(_by_reference=True)
        self._limits = limits
        self._versions: dict[int, ModelMetadata] | None = None
        self._fetched_at = -math.inf
        self._refreshing: asyncio.Task[None] | None = None
        self._coalesce = CoalesceSettings()
        self._coalescers: dict[int, Coalescer[_Part, Outputs]] = {}
        self._forwarded = 0

    async def versions(self) -> dict[int, ModelMetadata]:
        """Every served version's metadata, asked of a model replica again
        every few seconds: a redeploy may add or drop versions while this
        ingress keeps running.

        One fetch at a time serves every caller. Known metadata is refreshed
        in the background, so no request waits behind a busy model's queue;
        until the first fetch succeeds, callers share it, and a failure is
        every caller's 503 for a second rather than each one's own timeout.
        """
        if self._stale() and self._refreshing is None:
            self._refreshing = asyncio.create_task(self._refresh())
        if self._versions is None and self._refreshing is not None:
            await asyncio.shield(self._refreshing)  # a caller gone does not cancel it
        if self._versions is None:
            raise ServiceUnavailable(f"model {self.name!r} is not available")
        return self._versions

    def _stale(self) -> bool:
        ttl = _METADATA_TTL_S if self._versions is not None else _UNAVAILABLE_TTL_S
        return time.monotonic() - self._fetched_at > ttl

    async def _refresh(self) -> None:
        try:
            self._versions = await self.fetch_versions()
        except ServiceUnavailable:
            pass  # the versions known before stay; without any, callers get a 503
        finally:
            self._fetched_at = time.monotonic()
            self._refreshing = None

    async def fetch_versions(self) -> dict[int, ModelMetadata]:
        """Ask a model replica now: a 503 unless one answers within seconds."""
        try:
            return await asyncio.wait_for(self._handle.metadata.remote(), timeout=10)
        except Exception as exc:
            logger.warning("model %r metadata unavailable: %r", self.name, exc)
            raise ServiceUnavailable(f"model {self.name!r} is not available") from exc

    async def version(self, version: str | int | None = None) -> ModelMetadata:
        """One version's metadata (default: the highest), or a 404."""
        versions = await self.versions()
        if version is None:
            return versions[max(versions)]
        number = (int(version) if isinstance(version, int)
                  or (version.isascii() and version.isdigit()) else None)
        if number not in versions:
            raise NotFound(f"model {self.name!r} has no version {version!r} (it serves: "
                           f"{', '.join(map(str, sorted(versions)))})")
        return versions[number]

    async def check_ready(self, version: str | int | None = None) -> None:
        """A 404 unless ``version`` is served, a 503 unless a replica answers now."""
        await self.version(version)
        await self.fetch_versions()

    async def decode_images(self, meta: ModelMetadata, blobs: Sequence[bytes]) -> np.ndarray:
        """Encoded images → the model's input batch, on a thread: decoding is CPU
        work, and the event loop keeps answering other requests meanwhile."""
        geometry = meta.image_geometry()
        per_image = geometry.height * geometry.width * geometry.channels
        # Before decoding: the batch would be allocated for all of them.
        check_size(meta.input, len(blobs), len(blobs) * per_image, self._limits.max_rows,
                   self._limits.max_elements)
        return await asyncio.to_thread(decode_images, blobs, geometry,
                                       self._limits.max_image_pixels)

    def retune(self, settings: CoalesceSettings) -> None:
        """New coalescing settings, for requests from now on."""
        self._coalesce = settings
        for coalescer in self._coalescers.values():
            coalescer.max_calls = self._max_calls()

    def _max_calls(self) -> int | None:
        return self._coalesce.max_calls_in_flight if self._coalesce.enabled else None

    def _coalescer(self, meta: ModelMetadata) -> Coalescer[_Part, Outputs]:
        coalescer = self._coalescers.get(meta.version)
        if coalescer is None:
            coalescer = Coalescer(partial(self._call, meta.version), 1, self._max_calls())
            self._coalescers[meta.version] = coalescer
        # The model's batch limit may be retuned live: follow it.
        coalescer.max_rows = (self._coalesce.max_rows or meta.max_batch_size
                              or _DEFAULT_COALESCE_ROWS)
        return coalescer

    def stats(self) -> dict[str, Any]:
        """The model calls formed per version (calls, requests, rows per call),
        and how many callers' objects were forwarded as they were."""
        return {"forwarded": self._forwarded,
                "versions": {str(v): c.stats.as_dict()
                             for v, c in sorted(self._coalescers.items())}}

    async def infer(self, meta: ModelMetadata, batch: np.ndarray | ray.ObjectRef) -> Outputs:
        """Every output of one version for ``batch``, checked first (so a bad
        request fails alone), then sent with whatever else waits for the model.

        An ``ObjectRef`` (a Python caller's own object) is read in place; it
        is forwarded to the model as it is unless its dtype must be cast.
        """
        limits = self._limits
        if isinstance(batch, ray.ObjectRef):
            try:
                view = await batch
            except RayError as exc:
                raise BadRequest(f"cannot read the ObjectRef given as input: "
                                 f"{type(exc).__name__}") from None
            checked = check_batch(view, meta.input, limits.max_rows, limits.max_elements)
            uncast = np.may_share_memory(checked, view)  # else a cast copy: put that
            part = (_Part(len(checked), ref=batch, arrived=arrival_time()) if uncast
                    else _Part(len(checked), array=checked, arrived=arrival_time()))
        else:
            checked = check_batch(batch, meta.input, limits.max_rows, limits.max_elements)
            part = _Part(len(checked), array=checked, arrived=arrival_time())
        return await self._coalescer(meta).submit(part, part.rows)

    async def _call(self, version: int, parts: list[_Part]) -> list[Outputs | ServeError]:
        """One model call for ``parts``: their arrays put as one object, callers'
        objects forwarded; each part's answer in order."""
        local = [p.array for p in parts if p.ref is None]
        forwarded = [p.ref for p in parts if p.ref is not None]
        local_ref = ray.put(local) if local else None
        self._forwarded += len(forwarded)
        for part in parts:
            self._metrics.preprocessed(self.name, part.arrived)
        self._metrics.coalesced(self.name, sum(p.rows for p in parts))
        answers = await self._send(local_ref, forwarded, version)
        from_local, from_forwarded = iter(answers[:len(local)]), iter(answers[len(local):])
        return [next(from_forwarded if p.ref is not None else from_local) for p in parts]

    async def _send(self, local: ray.ObjectRef | None, forwarded: list[ray.ObjectRef],
                    version: int) -> list[Outputs | ServeError]:
        """The model call, sent again (a few times) when its replica died:
        inference has no side effects, and Serve routes it to a live replica."""
        delays = iter(_RETRY_DELAYS_S)
        while True:
            try:
                with self._metrics.inference(self.name):
                    return await self._handle.infer_parts.remote(local, forwarded, version)
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


class ModelRegistry:
    """The served models in config order; the first is the default."""

    def __init__(self, handles: dict[str, DeploymentHandle], limits: InputLimits,
                 metrics: IngressMetrics) -> None:
        self._models = {name: ModelEndpoint(name, h, limits, metrics)
                        for name, h in handles.items()}
        self.default = next(iter(self._models))

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def retune(self, settings: CoalesceSettings) -> None:
        for model in self._models.values():
            model.retune(settings)

    def stats(self) -> dict[str, Any]:
        """Per model and version, the calls that coalescing formed."""
        return {name: model.stats() for name, model in self._models.items()}

    def get(self, name: str | None = None) -> ModelEndpoint:
        """A model by name (default: the first configured), or a 404."""
        model = self._models.get(self.default if name is None else name)
        if model is None:
            raise NotFound(f"no model named {name!r} (served: {', '.join(self._models)})")
        return model

    async def ready(self) -> list[ModelMetadata]:
        """Each model's highest version, asked of its replicas now."""
        answers = await asyncio.gather(*(m.fetch_versions() for m in self._models.values()))
        return [versions[max(versions)] for versions in answers]
