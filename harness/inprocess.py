"""The app without Ray: a model client that runs each version's SavedModel in
this process, so the whole HTTP layer (every route, codec, limit, error and
the coalescing in front of the model) runs in a test in seconds.

It answers each part the way a model replica does
(:func:`deployments.served.answer_each`), without the replica's batch queue.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

from deployments.batching import Outputs
from deployments.codecs.errors import NotFound, ServeError
from deployments.config import ModelArgs
from deployments.runner import SavedModelRunner
from deployments.served import answer_each
from deployments.signature import Inputs, ModelMetadata
from deployments.versions import VersionStatus

if TYPE_CHECKING:
    import ray

# What the in-process model reports as its batch limit (coalescing follows it).
REPORTED_BATCH_SIZE = 32


class InProcessModel:
    """Every version of one model, loaded here on the CPU."""

    def __init__(self, model: ModelArgs) -> None:
        model = model.resolved()
        self._runners = {version: SavedModelRunner(model, version, path, "/CPU:0")
                         for version, path in model.version_dirs().items()}
        self.calls: list[int] = []  # parts per call, for tests of coalescing

    async def metadata(self) -> dict[int, ModelMetadata]:
        return {v: replace(r.metadata, max_batch_size=REPORTED_BATCH_SIZE)
                for v, r in self._runners.items()}

    async def statuses(self) -> list[VersionStatus]:
        return [VersionStatus(v, "AVAILABLE") for v in sorted(self._runners, reverse=True)]

    async def call(self, version: int, local: list[Inputs],
                   forwarded: list[dict[str, ray.ObjectRef]],
                   isolated: bool = False) -> list[Outputs | ServeError]:
        if forwarded:
            raise ValueError("no object store in process: nothing can be forwarded")
        self.calls.append(len(local))
        runner = self._runners.get(version)
        if runner is None:  # as a model replica answers
            raise NotFound(f"model version {version} is not served")
        return await answer_each(local, runner.metadata,
                                 lambda batch: asyncio.to_thread(runner.run, batch))
