"""Models composed into one (``pipelines:`` in the YAML): a step's inputs may
be the request's or earlier steps' outputs.

The ingress serves a pipeline as one more model (:class:`PipelineClient`,
version 1, metadata composed from its models'). A call issues every step at
once, each handed the pending answers of the steps it reads: on Ray those are
``DeploymentResponse`` objects, so Serve starts a step once its inputs exist
and its model replica reads them from the object store, where the replica
before it left them; the ingress only ever reads the last step's answer.
Each step runs in its model's replica (:func:`run_step`): inputs gathered
per request, the step's ``transform`` code if any, then the model's own batch
queue, so every stage batches with whatever else that model is serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import numpy as np
import ray

from deployments.codecs.tfserving_grpc import signature_def
from deployments.config import REQUEST, InputLimits, PipelineArgs, split_ref
from deployments.errors import NotFound, ServeError, clip
from deployments.metrics import PipelineMetrics
from deployments.replica.served import answer_each
from deployments.signature import PREDICT, STRING, ModelMetadata, TensorSpec, castable
from deployments.types import Inputs, Outputs
from deployments.user_code import Processor
from deployments.versions import VersionStatus

T = TypeVar("T")

# A pipeline serves one version: its models' own versions move underneath it.
PIPELINE_VERSION = 1

# (name, source, tensor): a named array taken from a source's answer.
Wire = tuple[str, str, str]
# Per request of a call: its arrays, or the error that already answers it.
Answers = Sequence[Inputs | Outputs | ServeError]


class PipelineMisconfigured(ServeError):
    """The pipeline's wiring does not fit its models' signatures: a server
    fault, named in every answer until the configuration is fixed."""

    status = 500


def _wires(refs: Mapping[str, str] | None) -> tuple[Wire, ...] | None:
    return None if refs is None else tuple((n, *split_ref(r)) for n, r in refs.items())


@dataclass(frozen=True)
class Step:
    """What one step's model replica needs to run it (sent with each call)."""

    pipeline: str
    name: str
    model: str
    inputs: tuple[Wire, ...] | None  # None: the request's inputs as they are
    transform: str | None = None
    version: int | None = None  # None: the model's highest
    # The last step's: the pipeline's outputs from it and the steps before it
    # (None: its own outputs as they are).
    outputs: tuple[Wire, ...] | None = None

    @property
    def upstream(self) -> tuple[str, ...]:
        """The earlier steps whose answers this one reads, in order of first use."""
        sources = [s for _, s, _ in (*(self.inputs or ()), *(self.outputs or ()))]
        return tuple(dict.fromkeys(s for s in sources if s not in (REQUEST, self.name)))

    @property
    def reads_request(self) -> bool:
        return self.inputs is None or any(s == REQUEST for _, s, _ in self.inputs)

    @property
    def built(self) -> bool:
        """Whether the pipeline, not the client, made this step's inputs: then
        inputs the model refuses are the pipeline's fault."""
        return self.transform is not None or not self.reads_request or any(
            s != REQUEST for _, s, _ in self.inputs or ())

    def __str__(self) -> str:
        return f"pipeline {self.pipeline!r} step {self.name!r}"


@dataclass(frozen=True)
class Plan:
    """A pipeline's steps in order, and how its metadata is composed.

    The last step answers the pipeline's outputs taken from itself and the
    steps it depends on; ``side`` outputs come from steps beside it (a
    branch that runs in parallel), whose answers the ingress reads and
    merges, rather than make the last step wait for them."""

    name: str
    steps: tuple[Step, ...]
    scores_output: str | None = None
    declared: tuple[TensorSpec, ...] = ()  # request inputs typed in the YAML
    side: tuple[Wire, ...] = ()

    @classmethod
    def from_args(cls, args: PipelineArgs) -> Plan:
        steps = [Step(args.name, s.step_name, s.model, _wires(s.inputs), s.transform,
                      s.version) for s in args.steps]
        last, wires = steps[-1], _wires(args.outputs)
        before = _depends_on(steps)
        own = wires and tuple(w for w in wires if w[1] in (last.name, *before))
        steps[-1] = replace(last, outputs=own)
        return cls(args.name, tuple(steps), args.scores_output,
                   tuple(TensorSpec(n, t.dtype, t.dims) for n, t in args.inputs.items()),
                   tuple(w for w in wires or () if w not in (own or ())))

    @property
    def answering(self) -> tuple[str, ...]:
        """The steps whose answers the ingress reads: the last, then the side ones."""
        return (self.steps[-1].name, *dict.fromkeys(s for _, s, _ in self.side))

    def merge(self, answers: Mapping[str, Answers]) -> list[Outputs | ServeError]:
        """Each request's outputs: the last step's, with the side outputs added."""
        last = answers[self.steps[-1].name]
        if not self.side:
            return list(last)
        merged: list[Outputs | ServeError] = []
        for i, own in enumerate(last):
            side = _pick(f"pipeline {self.name!r}", self.side, answers, i)
            merged.append(own if isinstance(own, ServeError) else
                          side if isinstance(side, ServeError) else {**own, **side})
        return merged

    def metadata(self, models: Mapping[str, ModelMetadata]) -> ModelMetadata:
        """The pipeline as one model, from each step's model's metadata (by
        step name): inputs are the request's (each typed as the model input it
        feeds, or as declared), outputs and labels those of the steps it names;
        ``PipelineMisconfigured`` where the wiring does not fit."""
        inputs = {spec.name: spec for spec in self.declared}
        image: tuple[str, ModelMetadata] | None = None
        transformed: set[str] = set()
        for step in self.steps:
            meta = models[step.name]
            wires = step.inputs if step.inputs is not None else tuple(
                (s.name, REQUEST, s.name) for s in meta.inputs)
            if step.transform is None:
                self._fits(step, meta, [name for name, _, _ in wires])
            for name, source, tensor in wires:
                if source != REQUEST:
                    given = self._output(step, models[source], tensor)
                    if step.transform is None:
                        self._feeds(step, given, meta.spec(name))
                elif step.transform is not None:
                    transformed.add(tensor)
                else:
                    self._typed(inputs, tensor, meta.spec(name))
                    if image is None and name == meta.image_input:
                        image = tensor, meta
        if untyped := sorted(transformed - set(inputs)):
            raise PipelineMisconfigured(
                f"pipeline {self.name!r}: request inputs {untyped} only feed transforms, so "
                "their type is unknown: declare each under the pipeline's inputs")
        last = self.steps[-1]
        wires = (*(last.outputs or ()), *self.side) if last.outputs is not None else tuple(
            (s.name, last.name, s.name) for s in models[last.name].outputs)
        sources = {name: (source, tensor) for name, source, tensor in wires}
        outputs = [replace(self._output(last, models[source], tensor), name=name)
                   for name, (source, tensor) in sources.items()]
        order = [s.name for s in self.steps]
        fed_by_scores = sorted((n for n, (s, t) in sources.items()
                                if models[s].scores_output == t),
                               key=lambda n: -order.index(sources[n][0]))  # the latest step's
        scores = self.scores_output or next(iter(fed_by_scores), next(
            (o.name for o in outputs if o.dtype != STRING and np.dtype(o.dtype).kind == "f"),
            outputs[0].name))
        if scores not in sources:
            raise PipelineMisconfigured(
                f"pipeline {self.name!r}: scores_output {scores!r} is not one of its outputs "
                f"({', '.join(sources)})")
        source, tensor = sources[scores]
        shape = next(o.shape for o in outputs if o.name == scores)
        if models[source].scores_output == tensor:  # a model's classes: its labels
            labels = models[source].labels
        else:  # class indices for [N, classes] scores, as for a model without labels
            labels = tuple(map(str, range(shape[1] or 0))) if len(shape) == 2 else ()
        specs = tuple(sorted(inputs.values(), key=lambda s: s.name))
        outs = tuple(sorted(outputs, key=lambda s: s.name))
        first = models[self.steps[0].name]
        return ModelMetadata(
            name=self.name, version=PIPELINE_VERSION, signature_name="serving_default",
            inputs=specs, outputs=outs, scores_output=scores, labels=labels,
            image_input=image[0] if image else None, method_name=PREDICT,
            signature_defs={"serving_default": signature_def(specs, outs, PREDICT)},
            max_batch_size=first.max_batch_size,
            preprocessing=image[1].preprocessing if image else first.preprocessing)

    def _fits(self, step: Step, meta: ModelMetadata, names: Sequence[str]) -> None:
        expected = {s.name for s in meta.inputs}
        if set(names) != expected:
            raise PipelineMisconfigured(
                f"{step} feeds {sorted(names)}, but model {meta.name!r} takes "
                f"{meta.describe_inputs()} (a transform may build them)")

    def _output(self, step: Step, meta: ModelMetadata, tensor: str) -> TensorSpec:
        spec = next((o for o in meta.outputs if o.name == tensor), None)
        if spec is None:
            raise PipelineMisconfigured(
                f"{step} reads {tensor!r} from model {meta.name!r}, which has no such output "
                f"(it has: {', '.join(o.name for o in meta.outputs)})")
        return spec

    @staticmethod
    def _feeds(step: Step, given: TensorSpec, spec: TensorSpec | None) -> None:
        """An earlier step's output that goes into a model input as it is must
        fit it: the same rank, fixed sizes and a dtype it can be cast to."""
        assert spec is not None  # _fits checked the names
        if len(given.shape) != len(spec.shape) or not castable(given.dtype, spec.dtype) or any(
                a is not None and b is not None and a != b
                for a, b in zip(given.shape[1:], spec.shape[1:], strict=True)):
            raise PipelineMisconfigured(
                f"{step} feeds {given.name!r} ({given.describe()}) to input {spec.name!r} of "
                f"{spec.describe()}")

    def _typed(self, inputs: dict[str, TensorSpec], name: str, spec: TensorSpec | None) -> None:
        assert spec is not None  # _fits checked the names
        known = inputs.setdefault(name, TensorSpec(name, spec.dtype, spec.shape))
        if (known.dtype, known.shape) != (spec.dtype, spec.shape):
            raise PipelineMisconfigured(
                f"pipeline {self.name!r}: request input {name!r} is {known.describe()}, but "
                f"it feeds a model input of {spec.describe()}")


def _depends_on(steps: Sequence[Step]) -> set[str]:
    """The steps the last one reads, directly or through others."""
    by_name = {s.name: s for s in steps}
    seen: set[str] = set()
    todo = list(steps[-1].upstream)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(by_name[name].upstream)
    return seen


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
        picked = _pick(step, step.inputs, sources, i)
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
    return [_pick(step, step.outputs, sources, i) for i in range(count)]


def _no_rows(part: Inputs | ServeError) -> bool:
    return not isinstance(part, ServeError) and bool(part) and all(
        isinstance(a, np.ndarray) and a.ndim > 0 and len(a) == 0 for a in part.values())


def _empty(spec: TensorSpec) -> np.ndarray:
    shape = (0, *(d or 0 for d in spec.shape[1:]))
    return np.empty(shape, dtype=object if spec.dtype == STRING else spec.dtype)


def _pick(who: object, wires: Sequence[Wire], sources: Mapping[str, Answers],
          i: int) -> Inputs | ServeError:
    """Request ``i``'s arrays named by ``wires``, or the error answering it."""
    arrays = {}
    for name, source, tensor in wires:
        part = sources[source][i]
        if isinstance(part, ServeError):
            return part
        if tensor not in part:  # the model's signature changed under the pipeline
            return PipelineMisconfigured(f"{who} reads {tensor!r} from {source!r}, which "
                                         f"answered {sorted(part)}")
        arrays[name] = part[tensor]
    return arrays


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
