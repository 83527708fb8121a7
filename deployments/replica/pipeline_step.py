"""A pipeline's step as its model's replica runs it (:func:`run_step`, sent
by ``ModelDeployment.infer_step``): inputs gathered per request from the
request and the earlier steps' answers, the step's ``transform`` code if any,
then the model's own batch queue; and where each step's time went on this
replica (:class:`StepLog`). The plan it runs is
:mod:`deployments.pipeline_plan`'s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from deployments.config import REQUEST, InputLimits
from deployments.errors import ServeError
from deployments.metrics import PipelineMetrics
from deployments.pipeline_plan import Answers, Step, pick
from deployments.replica.served import answer_each
from deployments.signature import STRING, ModelMetadata, TensorSpec
from deployments.types import Inputs, Outputs
from deployments.user_code import Processor


@dataclass
class StepStats:
    """Where one step's time went on a replica: gathering its inputs and
    running its transform, then the model (its batch queue included)."""

    calls: int = 0
    requests: int = 0
    feed_s: float = 0.0
    model_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"calls": self.calls, "requests": self.requests,
                "feed_s": round(self.feed_s, 4), "model_s": round(self.model_s, 4)}


@dataclass
class StepLog:
    """A replica's :class:`StepStats` by pipeline and step (``stats()``), and
    the same times as Prometheus histograms."""

    metrics: PipelineMetrics | None = None
    steps: dict[str, StepStats] = field(default_factory=dict)

    def record(self, step: Step, requests: int, feed_s: float, model_s: float) -> None:
        stats = self.steps.setdefault(f"{step.pipeline}/{step.name}", StepStats())
        stats.calls += 1
        stats.requests += requests
        stats.feed_s += feed_s
        stats.model_s += model_s
        if self.metrics is not None:
            self.metrics.step(step.pipeline, step.name, feed_s, model_s)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {name: stats.as_dict() for name, stats in sorted(self.steps.items())}


async def run_step(step: Step, request: Answers, upstream: Sequence[Answers],
                   meta: ModelMetadata, infer: Callable[[Inputs], Awaitable[Outputs]],
                   transforms: Mapping[str, Processor] | None = None,
                   log: StepLog | None = None,
                   limits: InputLimits | None = None) -> list[Outputs | ServeError]:
    """One step for each request of a call: its inputs picked from the
    request and the earlier steps' answers (an error there answers it
    unchanged), the transform run on them, the model's answer; the last step
    answers with the pipeline's outputs. Inputs the pipeline built that the
    model refuses, or beyond the app's ``limits`` (a transform that fans out
    on the data), are its fault (a 500 naming the step); a transform's own
    errors are answered as user code's are. A request left with no rows (a
    detector that found nothing to crop) answers empty outputs, unrun.
    ``transforms``: the replica's loaded transforms, by import path."""
    started = time.perf_counter()
    transform = (transforms or {})[step.transform] if step.transform else None
    sources: dict[str, Answers] = dict(zip(step.upstream, upstream, strict=True))
    if step.reads_request:
        sources[REQUEST] = request
    count = len(next(iter(sources.values())))

    async def feed(i: int) -> Inputs | ServeError:
        if step.inputs is None:
            return sources[REQUEST][i]
        picked = pick(step, step.inputs, sources, i)
        if isinstance(picked, ServeError) or transform is None:
            return picked
        try:
            return await transform(picked)
        except ServeError as exc:
            return exc

    parts = await asyncio.gather(*(feed(i) for i in range(count)))
    fed = time.perf_counter()
    empty = [i for i, part in enumerate(parts) if _no_rows(part)]
    answers = await answer_each([p for i, p in enumerate(parts) if i not in empty], meta,
                                infer, blame=str(step) if step.built else None,
                                limits=limits)
    for i in empty:
        answers.insert(i, {o.name: _empty(o) for o in meta.outputs})
    if log is not None:
        log.record(step, count, fed - started, time.perf_counter() - fed)
    if step.outputs is None:
        return answers
    sources[step.name] = answers
    return [pick(step, step.outputs, sources, i) for i in range(count)]


def _no_rows(part: Inputs | ServeError) -> bool:
    return not isinstance(part, ServeError) and bool(part) and all(
        isinstance(a, np.ndarray) and a.ndim > 0 and len(a) == 0 for a in part.values())


def _empty(spec: TensorSpec) -> np.ndarray:
    shape = (0, *(d or 0 for d in spec.shape[1:]))
    return np.empty(shape, dtype=object if spec.dtype == STRING else spec.dtype)


