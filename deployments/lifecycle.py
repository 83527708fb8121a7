"""The versions one model replica serves, kept in line with its base path
while it runs, the way TF Serving's file-system source and its
availability-preserving policy do.

Every ``poll_s`` the source is listed; the version policy picks among the
versions whose files were the same on two polls in a row (so a version being
copied in is not loaded half-written). A picked version is loaded and warmed
up on a thread of its own, then served; until then the replica keeps serving
what it has. A version that leaves the policy stops taking new requests (they
get a 404, and a request that named no version moves to another version),
finishes the ones it has, and is dropped, but only once a picked version is
available: a broken new version never leaves the replica with nothing. A
version that fails to load is reported with its error and tried again a few
times, and at once when its files change.
No Ray and no TensorFlow here: the replica passes in how to load a version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from deployments.codecs.errors import NotFound
from deployments.storage import VersionSource
from deployments.versions import VersionStatus

logger = logging.getLogger("ray.serve")

Served = TypeVar("Served")


class Policy(Protocol):
    def select(self, present: set[int]) -> set[int]: ...


class NoVersions(RuntimeError):
    """Nothing the policy picks could be loaded when the replica started."""


@dataclass
class _Failure:
    fingerprint: str  # the files that failed: new files are tried at once
    attempts: int
    retry_at: float


class VersionManager(Generic[Served]):
    """Loads, serves and unloads the versions of one model on one replica.

    Loading runs on a thread of its own; every change to what is served is
    made on the event loop, under :attr:`changing` (which the replica also
    holds while it retunes its versions, so none is loaded with old settings).
    A version that fails to load is tried again, as TF Serving does, up to
    ``MAX_LOAD_ATTEMPTS`` times ``retry_s`` apart (a passing store error),
    and at once when its files change.
    """

    MAX_LOAD_ATTEMPTS = 5

    def __init__(self, name: str, source: VersionSource, policy: Policy,
                 load: Callable[[int, Path], Served], poll_s: float,
                 retry_s: float = 60.0) -> None:
        self.name = name
        self._source = source
        self._policy = policy
        self._load = load
        self.poll_s = poll_s
        self._retry_s = retry_s
        self.served: dict[int, Served] = {}
        self.changing = asyncio.Lock()
        self._status: dict[int, VersionStatus] = {}
        self._failed: dict[int, _Failure] = {}
        self._last: dict[int, str] = {}  # the previous poll's listing
        self._in_flight: Counter[int] = Counter()
        self._drained: dict[int, asyncio.Event] = {}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load")
        self._watcher: asyncio.Task[None] | None = None
        self._drains: set[asyncio.Task[None]] = set()  # held until done

    def start(self) -> None:
        """Load what the policy picks now, before the replica takes traffic.
        If none of it loads (a broken newest version), the next highest
        version present that loads is served meanwhile, so new replicas can
        start; nothing loading at all is the replica's start-up error."""
        listing = self._source.listing()
        self._last = listing
        picked = self._policy.select(set(listing))
        for version in sorted(picked):
            self._publish(version, listing[version], self._attempt(version))
        for version in sorted(set(listing) - picked, reverse=True):
            if self.served or not picked:
                break
            logger.warning("model %r: no version the policy picks loads; trying version %d",
                           self.name, version)
            self._publish(version, listing[version], self._attempt(version))
        if not self.served:
            errors = "; ".join(f"version {v}: {s.error}" for v, s in sorted(self._status.items()))
            why = errors or (self._source.why_empty() if not listing else
                             f"the policy picks none of versions {sorted(listing)}")
            raise NoVersions(f"model {self.name!r}: nothing to serve under {self._source} "
                             f"({why})")

    def _attempt(self, version: int) -> Served | Exception:
        """``version`` loaded (on the loader thread), or why it could not be."""
        try:
            return self._load(version, self._source.local_dir(version))
        except Exception as exc:
            logger.exception("model %r version %d failed to load", self.name, version)
            return exc

    def _publish(self, version: int, fingerprint: str, result: Served | Exception) -> None:
        if isinstance(result, Exception):
            failure = self._failed.get(version)
            attempts = failure.attempts + 1 if failure and failure.fingerprint == fingerprint else 1
            self._failed[version] = _Failure(fingerprint, attempts,
                                             time.monotonic() + self._retry_s)
            self._status[version] = VersionStatus(version, "END", _reason(result))
            return
        self._failed.pop(version, None)
        self.served[version] = result
        self._status[version] = VersionStatus(version, "AVAILABLE")
        logger.info("model %r version %d available", self.name, version)

    def _due(self, version: int, fingerprint: str) -> bool:
        """Whether to (try to) load ``version`` now."""
        failure = self._failed.get(version)
        return (failure is None or failure.fingerprint != fingerprint
                or (failure.attempts < self.MAX_LOAD_ATTEMPTS
                    and time.monotonic() >= failure.retry_at))

    def watch(self) -> None:
        """Poll in the background from now on; a no-op off the event loop
        (the replica calls it from the entry points Serve and the ingress
        call regularly: metadata, health checks, retuning)."""
        if self.poll_s <= 0 or self._watcher is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._watcher = loop.create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.poll()
            except Exception:  # a listing that failed: the next poll tries again
                logger.exception("model %r: polling %s failed", self.name, self._source)

    async def poll(self) -> None:
        """One look at the source: load newly picked versions, drop old ones."""
        loop = asyncio.get_running_loop()
        listing = await loop.run_in_executor(self._loader, self._source.listing)
        steady = {v for v, fp in listing.items() if self._last.get(v) == fp}
        self._last = listing
        async with self.changing:
            # Served versions still present count as they are (a change to
            # their files reloads nothing); one whose files are gone is not.
            picked = self._policy.select(steady | (set(self.served) & set(listing)))
            for version in sorted(picked - set(self.served)):
                if version in steady and self._due(version, listing[version]):
                    self._status[version] = VersionStatus(version, "LOADING")
                    result = await loop.run_in_executor(self._loader, self._attempt, version)
                    self._publish(version, listing[version], result)
            if any(v in self.served for v in picked):  # availability first
                for version in sorted(set(self.served) - picked):
                    self._unload(version)

    def _unload(self, version: int) -> None:
        """No new requests for ``version``; dropped once those it has finish."""
        self.served.pop(version)
        self._status[version] = VersionStatus(version, "UNLOADING")
        logger.info("model %r version %d unloading", self.name, version)
        drain = asyncio.get_running_loop().create_task(self._drain(version))
        self._drains.add(drain)
        drain.add_done_callback(self._drains.discard)

    async def _drain(self, version: int) -> None:
        if self._in_flight[version]:
            await self._drained.setdefault(version, asyncio.Event()).wait()
        self._in_flight.pop(version, None)
        self._status[version] = VersionStatus(version, "END")
        logger.info("model %r version %d unloaded", self.name, version)

    @asynccontextmanager
    async def using(self, version: int | None) -> AsyncIterator[Served]:
        """``version`` (default: the highest served) for one call; an
        unloading version waits for every call that holds it."""
        number = version if version is not None else max(self.served, default=None)
        served = self.served.get(number) if number is not None else None
        if served is None or number is None:
            raise NotFound(f"model version {version} is not served")
        self._in_flight[number] += 1
        try:
            yield served
        finally:
            self._in_flight[number] -= 1
            if not self._in_flight[number] and number in self._drained:
                self._drained.pop(number).set()

    def latest(self) -> int:
        return max(self.served)

    def statuses(self) -> list[VersionStatus]:
        """Every version this replica has known, in any state, highest first."""
        return [self._status[v] for v in sorted(self._status, reverse=True)]


def _reason(exc: Exception) -> str:
    return getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
