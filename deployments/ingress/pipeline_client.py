"""A pipeline as the ingress serves it: one more model
(:class:`PipelineClient`, version 1), whose call issues every step of its
:class:`~deployments.pipeline_plan.Plan` at once to the steps' models
(:class:`StageClient`) and merges the answers the plan names.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import ray

from deployments.errors import NotFound, ServeError, clip
from deployments.pipeline_plan import PIPELINE_VERSION, PipelineMisconfigured, Plan, Step
from deployments.signature import ModelMetadata
from deployments.types import Inputs, Outputs
from deployments.versions import VersionStatus

T = TypeVar("T")


class StageClient(Protocol):
    """How a pipeline reaches a model: ``deployments.ingress.model_client`` on Ray."""

    def put(self, local: list[Inputs]) -> Any:
        """The request's arrays as every step that reads them receives them."""
        ...

    def step(self, step: Step, isolated: bool, request: Any,
             forwarded: list[dict[str, ray.ObjectRef]], *upstream: Any) -> Any:
        """``step`` issued now, its upstream answers still pending: an
        awaitable answer (with ``cancel()``) that later steps may be handed."""
        ...

    async def retrying(self, send: Callable[[], Awaitable[T]], name: str | None = None) -> T:
        """``send()``, sent again while no live replica took it (messages
        name ``name``)."""
        ...


class StageModel(Protocol):
    """A step's model as the ingress knows it (``catalog.VersionCatalog``)."""

    async def check_ready(self, version: str | int | None = None) -> ModelMetadata: ...


class PipelineClient:
    """A pipeline as the ingress reaches a model (``registry.ModelClient``)."""

    def __init__(self, plan: Plan, stages: Mapping[str, StageClient],
                 models: Mapping[str, StageModel]) -> None:
        """``models``: each step model's endpoint, whose metadata the
        pipeline's is composed from."""
        self.plan = plan
        self._stages = {s.model: stages[s.model] for s in plan.steps}
        self._models = {s.model: models[s.model] for s in plan.steps}

    async def metadata(self) -> dict[int, ModelMetadata]:
        """The pipeline's metadata, from the version each step runs, asked of
        the models' replicas (at most once a second each): a pipeline is
        ready while all of its models are."""
        async def step_meta(step: Step) -> ModelMetadata:
            try:
                return await self._models[step.model].check_ready(step.version)
            except NotFound as exc:
                raise PipelineMisconfigured(f"{step} runs model {step.model!r} version "
                                            f"{step.version}: {exc.message}") from None

        metas = await asyncio.gather(*(step_meta(s) for s in self.plan.steps))
        return {PIPELINE_VERSION: self.plan.metadata(
            {s.name: meta for s, meta in zip(self.plan.steps, metas, strict=True)})}

    async def statuses(self) -> list[VersionStatus]:
        """Available while every model answers and the wiring fits them."""
        await self.metadata()
        return [VersionStatus(PIPELINE_VERSION, "AVAILABLE")]

    async def call(self, version: int, local: list[Inputs],
                   forwarded: list[dict[str, ray.ObjectRef]],
                   isolated: bool = False,
                   signature: str | None = None) -> list[Outputs | ServeError]:
        """Every step issued at once; each request's outputs (the request's
        arrays put once, read by each step that needs them). A pipeline has
        one signature: ``signature`` is always none."""
        if version != PIPELINE_VERSION:
            raise NotFound(f"pipeline {self.plan.name!r} has no version "
                           f"{clip(str(version))!r} (it serves: {PIPELINE_VERSION})")
        first = self._stages[self.plan.steps[0].model]
        request = first.put(local)

        async def send() -> list[Outputs | ServeError]:
            pending: dict[str, Any] = {}
            try:
                for step in self.plan.steps:
                    reads = step.reads_request
                    pending[step.name] = self._stages[step.model].step(
                        step, isolated, request if reads else None,
                        forwarded if reads else [], *(pending[s] for s in step.upstream))
                names = self.plan.answering
                answers = await asyncio.gather(*(pending[n] for n in names))
            except BaseException:
                for answer in pending.values():
                    with contextlib.suppress(Exception):  # one that failed says so again
                        answer.cancel()
                raise
            return self.plan.merge(dict(zip(names, answers, strict=True)))

        return await first.retrying(send, name=self.plan.name)
