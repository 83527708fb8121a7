"""What the ingress knows of one model's versions: their metadata as the
replicas report it (cached, refreshed in the background, followed across
redeploys), its labels and traffic split, and readiness probes that share
one call."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection
from typing import Protocol

from deployments.codecs.numbers import version_number
from deployments.errors import BadRequest, NotFound, ServeError, ServiceUnavailable, clip
from deployments.signature import ModelMetadata
from deployments.versions import Routing, VersionStatus

# How long the versions and signatures learned from a model replica are
# trusted (then refreshed in the background): a version a replica has just
# loaded takes requests that name no version within about this long.
_METADATA_TTL_S = 1.0
# How long a model that could not be asked stays unavailable before it is asked again.
_UNAVAILABLE_TTL_S = 1.0
# How long a readiness probe's answer serves every caller.
_PROBE_TTL_S = 1.0
# A request turned away by every version it knows asks the replicas again
# this often (while they change versions).
FOLLOW_POLL_S = 0.2


class MetadataSource(Protocol):
    """What a model's replicas say about its versions."""

    async def metadata(self) -> dict[int, ModelMetadata]:
        """Every served version's metadata; ``ServiceUnavailable`` if none answers."""
        ...

    async def statuses(self) -> list[VersionStatus]:
        """Every version the replicas know of, in any state, highest first."""
        ...


class VersionCatalog:
    """One model's versions, labels and canary split, as the ingress knows them."""

    def __init__(self, name: str, source: MetadataSource,
                 on_refresh: Callable[[Collection[int]], None] = lambda served: None) -> None:
        """``on_refresh``: told the served versions after each fetch."""
        self.name = name
        self.routing = Routing()
        self._source = source
        self._on_refresh = on_refresh
        self._versions: dict[int, ModelMetadata] | None = None
        self._unavailable: ServeError | None = None  # why the last fetch failed
        self._fetched_at = -math.inf
        self._refreshing: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[dict[int, ModelMetadata]] | None = None
        self._probed_at = -math.inf

    @property
    def known(self) -> Collection[int]:
        """The versions served at the last fetch (none before the first)."""
        return self._versions or {}

    async def versions(self) -> dict[int, ModelMetadata]:
        """Every served version's metadata, asked of a model replica again
        every few seconds: a redeploy may add or drop versions while this
        ingress keeps running.

        One fetch at a time serves every caller. Known metadata is refreshed
        in the background, so no request waits behind a busy model's queue;
        until the first fetch succeeds, callers share it, and a failure is
        every caller's 503 for a second rather than each one's own timeout.
        """
        if self._stale():
            self._fetch()
        if self._versions is None and self._refreshing is not None:
            await asyncio.shield(self._refreshing)  # a caller gone does not cancel it
        if self._versions is None:
            raise self._unavailable or ServiceUnavailable(f"model {self.name!r} is not available")
        return self._versions

    def _stale(self) -> bool:
        ttl = _METADATA_TTL_S if self._versions is not None else _UNAVAILABLE_TTL_S
        return time.monotonic() - self._fetched_at > ttl

    def _fetch(self) -> asyncio.Task[None]:
        """The fetch under way, or a new one: one at a time for every caller."""
        if self._refreshing is None:
            self._refreshing = asyncio.create_task(self._refresh())
        return self._refreshing

    async def _refresh(self) -> None:
        try:
            self._versions = await self._source.metadata()
            self._unavailable = None
            self._on_refresh(self._versions)
        except ServeError as exc:  # the versions known before stay; without any,
            self._unavailable = exc  # callers get this (a 503, a pipeline's wiring fault)
        finally:
            self._fetched_at = time.monotonic()
            self._refreshing = None

    async def another(self, tried: set[int]) -> ModelMetadata:
        """The highest version not yet ``tried`` by a request that named none,
        once a replica turned it away: a redeploy dropped it, or replicas
        that follow their model's base path disagree for a moment (one has
        loaded a version another has not, or has dropped one another still
        serves). The replicas are asked again each time (one fetch at a time
        for every caller); once every known version was tried, the round
        starts again after a short wait. The caller's deadline bounds it."""
        while True:
            versions = await self._ask_again()
            others = [v for v in versions if v not in tried]
            if others:
                return versions[max(others)]
            tried.clear()
            await asyncio.sleep(FOLLOW_POLL_S)

    async def _ask_again(self) -> dict[int, ModelMetadata]:
        """The versions a replica lists now (one fetch at a time for every caller)."""
        await asyncio.shield(self._fetch())
        return self._versions or {}

    async def listed(self, version: int) -> bool:
        """Whether a replica lists ``version`` now."""
        return version in await self._ask_again()

    async def version(self, version: str | int | None = None,
                      label: str | None = None) -> ModelMetadata:
        """One version's metadata, by number or label (a version string that
        is one of the labels is taken as it); default: the highest; else a 404."""
        if label is None and isinstance(version, str) and version in self.routing.labels:
            label, version = version, None
        if label is not None:
            version = self.labeled(label)
        versions = await self.versions()
        if version is None:
            return versions[max(versions)]
        number = version if isinstance(version, int) else version_number(version)
        if number not in versions:
            raise NotFound(f"Servable not found for request: Specific({self.name}, "
                           f"{clip(str(version))}): model {self.name!r} has no version "
                           f"{clip(str(version))!r} (it serves: "
                           f"{', '.join(map(str, sorted(versions)))})")
        return versions[number]

    async def split(self, meta: ModelMetadata) -> ModelMetadata:
        """The version a traffic split sends a request that named none to
        (``meta``, the highest, without a split or while the picked one is
        not served), on ``meta``'s signature."""
        picked = self.routing.split()
        if picked is None:
            return meta
        return (await self.versions()).get(picked, meta).signature(meta.named_signature)

    def labeled(self, label: str) -> int:
        """The version ``label`` names, or TF Serving's 400 (ours lists the labels)."""
        labels = self.routing.labels
        if label not in labels:
            known = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"
            raise BadRequest(f"Unrecognized servable version label: {clip(label)} (model "
                             f"{self.name!r} has labels: {known})")
        return labels[label]

    async def statuses(self) -> list[VersionStatus]:
        """Every version's state (loading, available, unloading, ended), as
        one model replica reports it."""
        return await self._source.statuses()

    async def check_ready(self, version: str | int | None = None) -> ModelMetadata:
        """``version``'s metadata: a 404 unless it is served, a 503 unless a
        replica answered just now.

        One probe at a time asks the replicas, and its answer is kept for a
        second: a flood of readiness probes costs the model one metadata call
        a second, not one each, and cannot crowd out inference.
        """
        meta = await self.version(version)
        if self._probe is None or (self._probe.done()
                                   and time.monotonic() - self._probed_at > _PROBE_TTL_S):
            self._probe = asyncio.create_task(self._probe_once())
        await asyncio.shield(self._probe)  # a caller gone does not cancel it
        return meta

    async def _probe_once(self) -> dict[int, ModelMetadata]:
        try:
            return await self._source.metadata()
        finally:  # its answer counts from when it came
            self._probed_at = time.monotonic()
