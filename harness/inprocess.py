"""The app without Ray: a model client that runs each version's SavedModel in
this process, so the whole HTTP layer (every route, codec, limit, error and
the coalescing in front of the model) runs in a test in seconds.

It answers each part the way a model replica does
(:func:`deployments.replica.served.answer_each`), without the replica's batch queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from deployments.config import AppArgs, InputLimits, ModelArgs
from deployments.errors import NotFound, ServeError
from deployments.ingress.dataplane import DataPlane
from deployments.ingress.registry import ModelRegistry
from deployments.metrics import IngressMetrics
from deployments.model_files import resolved, version_dirs
from deployments.pipeline_plan import Plan, Step
from deployments.replica.pipeline_step import run_step
from deployments.replica.runner import SavedModelRunner
from deployments.replica.served import answer_each
from deployments.signature import ModelMetadata
from deployments.types import Inputs, Outputs
from deployments.user_code import code_paths, load_processors, load_transforms
from deployments.versions import Routing, VersionStatus

if TYPE_CHECKING:
    import ray

T = TypeVar("T")

# What the in-process model reports as its batch limit (coalescing follows it).
REPORTED_BATCH_SIZE = 32


class InProcessModel:
    """Every version of one model, loaded here on the CPU."""

    def __init__(self, model: ModelArgs, transforms: tuple[str, ...] = (),
                 limits: InputLimits | None = None) -> None:
        """``transforms``: the pipeline steps' code run on this model, the
        inputs they build held to ``limits``."""
        model = resolved(model)
        self._limits = limits
        self._runners = {version: SavedModelRunner(model, version, path, "/CPU:0")
                         for version, path in version_dirs(model).items()}
        self._transforms = load_transforms(model.name, transforms)
        self.calls: list[int] = []  # parts per call, for tests of coalescing

    async def metadata(self) -> dict[int, ModelMetadata]:
        return {v: replace(r.metadata, max_batch_size=REPORTED_BATCH_SIZE)
                for v, r in self._runners.items()}

    async def statuses(self) -> list[VersionStatus]:
        return [VersionStatus(v, "AVAILABLE") for v in sorted(self._runners, reverse=True)]

    async def call(self, version: int, local: list[Inputs],
                   forwarded: list[dict[str, ray.ObjectRef]],
                   isolated: bool = False,
                   signature: str | None = None) -> list[Outputs | ServeError]:
        if forwarded:
            raise ValueError("no object store in process: nothing can be forwarded")
        self.calls.append(len(local))
        runner = self._runners.get(version)
        if runner is None:  # as a model replica answers
            raise NotFound(f"model version {version} is not served")
        return await answer_each(local, runner.metadata.signature(signature),
                                 _on_a_thread(runner, signature), checked=True)

    @staticmethod
    def put(local: list[Inputs]) -> list[Inputs]:
        return local

    def step(self, step: Step, isolated: bool, request: list[Inputs] | None,
             forwarded: list[dict[str, ray.ObjectRef]],
             *upstream: asyncio.Future[list[Outputs | ServeError]]
             ) -> asyncio.Future[list[Outputs | ServeError]]:
        """A pipeline step as a task that waits for its upstream steps' tasks."""
        return asyncio.ensure_future(self._step(step, request or [], upstream))

    async def _step(self, step: Step, request: list[Inputs],
                    upstream: tuple[asyncio.Future[list[Outputs | ServeError]], ...]
                    ) -> list[Outputs | ServeError]:
        runner = self._runners[step.version or max(self._runners)]
        return await run_step(step, request, await asyncio.gather(*upstream), runner.metadata,
                              _on_a_thread(runner), self._transforms, limits=self._limits)

    @staticmethod
    async def retrying(send: Callable[[], Awaitable[T]], name: str | None = None) -> T:
        return await send()


def _on_a_thread(runner: SavedModelRunner, signature: str | None = None
                 ) -> Callable[[Inputs], Awaitable[Outputs]]:
    """``runner`` called off the event loop, as a replica's model thread calls it."""
    return lambda batch: asyncio.to_thread(runner.run, batch, signature)


def in_process_plane(args: AppArgs, metrics: IngressMetrics,
                     routing: Mapping[str, Routing] | None = None) -> DataPlane:
    """The data plane the Preprocessor builds for ``args``, its models (and the
    pipelines over them) run in this process, with the code they name."""
    transforms = args.transforms()
    clients = {m.name: InProcessModel(m, transforms.get(m.name, ()), args.limits)
               for m in args.models}
    code = load_processors(code_paths([*args.models, *args.pipelines]))
    return DataPlane(ModelRegistry(clients, metrics, routing, code,
                                   tuple(Plan.from_args(p) for p in args.pipelines)), args.limits)
