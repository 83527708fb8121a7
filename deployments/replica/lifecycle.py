"""The versions one model replica serves, kept in line with its base path
while it runs, the way TF Serving's file-system source and its
availability-preserving policy do.

Every ``poll_s`` the source is listed; the version policy picks among the
versions whose files were the same on two polls in a row (so a version being
copied in is not loaded half-written); a replica starting takes two listings
``settle_s`` apart the same way. A picked version is loaded and warmed up on a
thread of its own, then served; until then the replica keeps serving what it
has. A served version whose files change is loaded anew once they are steady
and swapped in when loaded (the old load finishes its requests); if that
fails, the old load keeps serving and the error is reported.

A version that leaves the policy stops taking new requests (they get a 404,
and a request that named no version moves to another version), finishes the
ones it has, and is dropped, but only once a picked version is available: a
broken new version never leaves the replica with nothing. A version that
fails to load is reported with its error and tried again a few times, and at
once when its files change.

No Ray and no TensorFlow here: the replica passes in how to load a version.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from deployments.errors import NotFound
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

    Each load of a version is a generation of its own: requests and drains
    count by generation, so a version reloaded (or unloaded and picked
    again) while an older load drains is never reported ended while it serves.
    ``settle_s`` is how far apart :meth:`start`'s two listings are: by default
    ``poll_s`` up to ``MAX_SETTLE_S`` (that, too, with ``poll_s`` 0).
    """

    MAX_LOAD_ATTEMPTS = 5
    MAX_SETTLE_S = 1.0

    def __init__(self, name: str, source: VersionSource, policy: Policy,
                 load: Callable[[int, Path], Served], poll_s: float,
                 retry_s: float = 60.0, settle_s: float | None = None,
                 prepare: Callable[[], None] | None = None) -> None:
        """``prepare``: what loading needs set up first, run once by
        :meth:`start` when there is a version to load (its error is the
        replica's, not a version's)."""
        self.name = name
        self._source = source
        self._policy = policy
        self._load = load
        self._prepare = prepare
        self.poll_s = poll_s
        self._retry_s = retry_s
        self._settle_s = (settle_s if settle_s is not None
                          else min(poll_s or self.MAX_SETTLE_S, self.MAX_SETTLE_S))
        self.served: dict[int, Served] = {}
        self.changing = asyncio.Lock()
        self._status: dict[int, VersionStatus] = {}
        self._failed: dict[int, _Failure] = {}
        self._last: dict[int, str] = {}  # the previous poll's listing
        self._generations = itertools.count()
        self._generation: dict[int, int] = {}  # each served version's load
        self._loaded_from: dict[int, str] = {}  # the fingerprint each was loaded from
        self._in_flight: Counter[tuple[int, int]] = Counter()  # by (version, generation)
        self._drained: dict[tuple[int, int], asyncio.Event] = {}
        self._draining: Counter[int] = Counter()  # older loads still finishing, by version
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load")
        self._watcher: asyncio.Task[None] | None = None
        self._drains: set[asyncio.Task[None]] = set()  # held until done

    def start(self) -> None:
        """Load what the policy picks now, before the replica takes traffic,
        among the versions whose files agree on two listings ``settle_s``
        apart (a replica started while a version is copied in does not load
        it half-written; a later poll does once it is steady). If none of it
        loads (a broken newest version), the next highest steady version that
        loads is served meanwhile, so new replicas can start; nothing loading
        at all is the replica's start-up error."""
        first = self._source.listing()
        time.sleep(self._settle_s)
        listing = self._source.listing()
        self._last = listing
        steady = {v for v, fingerprint in listing.items() if first.get(v) == fingerprint}
        picked = self._policy.select(steady)
        if picked and self._prepare is not None:  # (else nothing below loads)
            self._prepare()
        for version in sorted(picked):
            self._publish(version, listing[version], self._attempt(version))
        for version in sorted(steady - picked, reverse=True):
            if self.served or not picked:
                break
            logger.warning("model %r: no version the policy picks loads; trying version %d",
                           self.name, version)
            self._publish(version, listing[version], self._attempt(version))
        if not self.served:
            why = [f"version {v}: {s.error}" for v, s in sorted(self._status.items())]
            if changing := sorted(set(listing) - steady):
                why.append(f"the files of versions {changing} changed within {self._settle_s} s "
                           "(still being copied in?)")
            if steady and not picked:
                why.append(f"the policy picks none of versions {sorted(steady)}")
            raise NoVersions(f"model {self.name!r}: nothing to serve under {self._source} "
                             f"({'; '.join(why) or self._source.why_empty()})")

    def _attempt(self, version: int) -> Served | Exception:
        """``version`` loaded (on the loader thread), or why it could not be."""
        try:
            return self._load(version, self._source.local_dir(version))
        except Exception as exc:
            logger.exception("model %r version %d failed to load", self.name, version)
            return exc

    def _publish(self, version: int, fingerprint: str, result: Served | Exception) -> None:
        """Serve a load of ``version`` from ``fingerprint``'s files, or report
        why it failed; a new load of a served version replaces the old one in
        one step (the old one finishes its requests), a failed one leaves it."""
        if isinstance(result, Exception):
            failure = self._failed.get(version)
            attempts = failure.attempts + 1 if failure and failure.fingerprint == fingerprint else 1
            self._failed[version] = _Failure(fingerprint, attempts,
                                             time.monotonic() + self._retry_s)
            self._status[version] = (
                VersionStatus(version, "AVAILABLE",
                              f"its changed files failed to load: {_reason(result)}")
                if version in self.served else VersionStatus(version, "END", _reason(result)))
            return
        self._failed.pop(version, None)
        if version in self.served:
            self._retire(version)
        self.served[version] = result
        self._generation[version] = next(self._generations)
        self._loaded_from[version] = fingerprint
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
        listing = await loop.run_in_executor(self._loader, self._look, set(self.served))
        steady = {v for v, fp in listing.items() if self._last.get(v) == fp}
        self._last = listing
        async with self.changing:
            # Served versions still present count as they are, their files
            # changing or not; one whose files are gone is not.
            picked = self._policy.select(steady | (set(self.served) & set(listing)))
            for version in sorted(picked):
                fingerprint = listing.get(version, "")
                if (version in steady and fingerprint != self._loaded_from.get(version)
                        and self._due(version, fingerprint)):
                    if version not in self.served:  # else it serves on while reloading
                        self._status[version] = VersionStatus(version, "LOADING")
                    result = await loop.run_in_executor(self._loader, self._attempt, version)
                    self._publish(version, fingerprint, result)
            if any(v in self.served for v in picked):  # availability first
                for version in sorted(set(self.served) - picked):
                    self._unload(version)

    def _look(self, served: set[int]) -> dict[int, str]:
        """The fingerprints of the versions present that the policy could
        pick: the version names are listed, then only the versions it picks
        among those served, steady or not looked at yet, until it picks none
        of the last kind (a new version's files are looked at on each poll
        until they are steady, the ones below only while no higher counts)."""
        present = self._source.versions()
        listing: dict[int, str] = {}
        while True:
            counts = {v for v, fp in listing.items() if v in served or self._last.get(v) == fp}
            todo = self._policy.select(counts | (present - set(listing))) - set(listing)
            if not todo:
                return listing
            found = self._source.fingerprints(todo)
            listing |= found
            present -= todo - set(found)  # no saved_model.pb: no version

    def _unload(self, version: int) -> None:
        """No new requests for ``version``; dropped once those it has finish."""
        self._retire(version)
        self._status[version] = VersionStatus(version, "UNLOADING")
        logger.info("model %r version %d unloading", self.name, version)

    def _retire(self, version: int) -> None:
        """Take ``version``'s current load off serving; it drains on its own."""
        self.served.pop(version)
        self._loaded_from.pop(version)
        key = (version, self._generation.pop(version))
        self._draining[version] += 1
        drain = asyncio.get_running_loop().create_task(self._drain(key))
        self._drains.add(drain)
        drain.add_done_callback(self._drains.discard)

    async def _drain(self, key: tuple[int, int]) -> None:
        """Wait for the requests of one load; the version ends once no load
        of it serves, loads or drains."""
        if self._in_flight[key]:
            await self._drained.setdefault(key, asyncio.Event()).wait()
        version = key[0]
        self._draining[version] -= 1
        if self._draining[version] == 0:
            del self._draining[version]
            if self._status[version].state == "UNLOADING":
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
        key = (number, self._generation[number])
        self._in_flight[key] += 1
        try:
            yield served
        finally:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]
                if event := self._drained.pop(key, None):
                    event.set()

    def latest(self) -> int:
        return max(self.served)

    def statuses(self) -> list[VersionStatus]:
        """Every version this replica has known, in any state, highest first."""
        return [self._status[v] for v in sorted(self._status, reverse=True)]


def _reason(exc: Exception) -> str:
    return getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
