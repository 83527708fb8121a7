"""A pipeline's plan (``pipelines:`` in the YAML, models composed into one):
its steps and how they are wired, a step's inputs the request's or earlier
steps' outputs, and its metadata composed from its models'. Pure: what both
sides share, no Ray.

The ingress serves a pipeline as one more model
(:class:`deployments.ingress.pipeline_client.PipelineClient`, version 1,
metadata composed here). A call issues every step at once, each handed the
pending answers of the steps it reads: on Ray those are ``DeploymentResponse``
objects, so Serve starts a step once its inputs exist and its model replica
reads them from the object store, where the replica before it left them; the
ingress only ever reads the last step's answer. Each step runs in its model's
replica (:func:`deployments.replica.pipeline_step.run_step`): inputs gathered
per request, the step's ``transform`` code if any, then the model's own batch
queue, so every stage batches with whatever else that model is serving.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from deployments.codecs.tfserving_grpc import signature_def
from deployments.config import REQUEST, PipelineArgs, split_ref
from deployments.errors import ServeError
from deployments.signature import (
    PREDICT,
    ModelMetadata,
    TensorSpec,
    castable,
    default_scores,
)
from deployments.types import DEFAULT_SIGNATURE, Inputs, Outputs

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
            side = pick(f"pipeline {self.name!r}", self.side, answers, i)
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
            if meta.unnamed_refused:  # a step runs its model's default signature
                raise PipelineMisconfigured(
                    f"{step} runs model {meta.name!r}, which has no {DEFAULT_SIGNATURE!r} "
                    f"signature (it has: {', '.join(meta.signature_names)}): set the model's "
                    "signature_name to the one the step should run")
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
        scores = self.scores_output or next(iter(fed_by_scores), default_scores(outputs))
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
            name=self.name, version=PIPELINE_VERSION, signature_name=DEFAULT_SIGNATURE,
            inputs=specs, outputs=outs, scores_output=scores, labels=labels,
            image_input=image[0] if image else None, method_name=PREDICT,
            signature_defs={DEFAULT_SIGNATURE: signature_def(specs, outs, PREDICT)},
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


def pick(who: object, wires: Sequence[Wire], sources: Mapping[str, Answers],
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
