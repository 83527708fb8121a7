"""The app's models by name, as every protocol sees them.

Each model is its own deployment; a :class:`ModelEndpoint` holds its cached
metadata and owns the one data path into it: check the batch against the
signature, coalesce it with the other requests waiting for the same version
(``deployments.ingress.coalescing``), and send them in one call through its
:class:`ModelClient` (``deployments.ingress.model_client``: arrays put once into the
object store, callers' own ``ObjectRef`` forwarded as they are).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, Protocol, cast

import numpy as np
import ray

from deployments.codecs.image import decode_images
from deployments.codecs.numbers import version_number
from deployments.config import InputLimits
from deployments.errors import (
    BadRequest,
    ModelFailed,
    NotFound,
    ServeError,
    ServiceUnavailable,
    clip,
)
from deployments.ingress.budget import MemoryBudget, off_loop
from deployments.ingress.coalescing import Coalescer, CoalesceSettings
from deployments.ingress.pipeline_client import PipelineClient, StageClient
from deployments.metrics import IngressMetrics, arrival_time
from deployments.objects import read_objects
from deployments.pipeline_plan import Plan
from deployments.replica.batching import rows_of
from deployments.signature import ModelMetadata, check_inputs, check_size
from deployments.types import Inputs, Outputs
from deployments.user_code import Processors
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
_FOLLOW_POLL_S = 0.2

# Rows per coalesced call while the model's own max_batch_size is not known.
_DEFAULT_COALESCE_ROWS = 32


class DeadlinePassed(ServiceUnavailable):
    """A request not answered within its deadline: a 503 (over gRPC,
    ``DEADLINE_EXCEEDED`` when the deadline was the client's)."""

    def __init__(self, timeout_s: float, clients: bool) -> None:
        super().__init__(f"the request was not answered within {timeout_s:g} s"
                         f"{' (its deadline)' if clients else ''}; retry")
        self.clients = clients


@dataclass(frozen=True)
class _Deadline:
    when: float  # on the event loop's clock
    timeout_s: float
    clients: bool  # the client asked for it (else the config's request_timeout_s)


# The deadline of the HTTP or gRPC request being handled (None: a handle call).
_deadline: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar(
    "deadline", default=None)


@asynccontextmanager
async def deadline(timeout_s: float, clients: bool = False) -> AsyncIterator[asyncio.Timeout]:
    """A request's deadline, from its arrival to its answer: everything inside
    (reading the body, parsing, waiting for a decode thread, the model) is
    cancelled ``timeout_s`` from now, a :class:`DeadlinePassed`; a request
    past it is not sent to its model. (The ``Timeout`` may be rescheduled:
    an HTTP answer being sent is not cut off.)"""
    when = asyncio.get_running_loop().time() + timeout_s
    token = _deadline.set(_Deadline(when, timeout_s, clients))
    timeout = asyncio.timeout_at(when)
    try:
        async with timeout:
            yield timeout
    except TimeoutError:
        if not timeout.expired():
            raise
        raise DeadlinePassed(timeout_s, clients) from None
    finally:
        _deadline.reset(token)


def _check_deadline() -> None:
    """A :class:`DeadlinePassed` once the request's deadline has passed (work
    done without yielding to the event loop may overrun it)."""
    current = _deadline.get()
    if current is not None and asyncio.get_running_loop().time() >= current.when:
        raise DeadlinePassed(current.timeout_s, current.clients)


class ReplicaDied(Exception):
    """A model replica died while it held a call, and not because it was
    stopped or its node went away: the call's requests may be what killed it."""


class ModelClient(Protocol):
    """How an endpoint reaches its model's replicas (Ray's: ``model_client.py``;
    a pipeline's: ``pipeline.PipelineClient``)."""

    async def metadata(self) -> dict[int, ModelMetadata]:
        """Every served version's metadata; ``ServiceUnavailable`` if none answers."""
        ...

    async def statuses(self) -> list[VersionStatus]:
        """Every version the replicas know of, in any state, highest first."""
        ...

    async def call(self, version: int, local: list[Inputs],
                   forwarded: list[dict[str, ray.ObjectRef]],
                   isolated: bool = False,
                   signature: str | None = None) -> list[Outputs | ServeError]:
        """Run each part (``local`` ones first) on ``signature`` (none: the
        default), answering each on its own (``isolated``: each in TensorFlow
        calls of its own, outside the batch queue); ``ReplicaDied`` when the
        replica died holding the call."""
        ...


class DeploymentClient(ModelClient, StageClient, Protocol):
    """A model deployment's client, through which pipelines run their steps too."""


@dataclass(frozen=True)
class _Part:
    """One request's checked inputs: arrays to send with their batch-mates, or
    a caller's own objects to forward as they are."""

    rows: int
    inputs: Inputs | None = None
    refs: dict[str, ray.ObjectRef] | None = None
    arrived: float | None = None  # for the preprocess-time metric


class Answer(NamedTuple):
    """A model's outputs, and the version that gave them: a request that
    named no version may have followed a redeploy to another one, whose
    labels and outputs its answer must be built from."""

    meta: ModelMetadata
    outputs: Outputs


class ModelEndpoint:
    """One model deployment: its versions' metadata and the way in."""

    def __init__(self, name: str, client: ModelClient, limits: InputLimits,
                 metrics: IngressMetrics, decoder: Executor, budget: MemoryBudget,
                 processors: Processors) -> None:
        self.name = name
        self._processors = processors
        self.routing = Routing()
        self._decoder = decoder
        self._budget = budget
        self._client = client
        self._metrics = metrics
        self._limits = limits
        self._versions: dict[int, ModelMetadata] | None = None
        self._unavailable: ServeError | None = None  # why the last fetch failed
        self._fetched_at = -math.inf
        self._refreshing: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[dict[int, ModelMetadata]] | None = None
        self._probed_at = -math.inf
        self._coalesce = CoalesceSettings()
        # One per version and signature (none: the default) in use.
        self._coalescers: dict[tuple[int, str | None], Coalescer[_Part, Outputs]] = {}
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
            self._versions = await self._client.metadata()
            self._unavailable = None
            self._prune()
        except ServeError as exc:  # the versions known before stay; without any,
            self._unavailable = exc  # callers get this (a 503, a pipeline's wiring fault)
        finally:
            self._fetched_at = time.monotonic()
            self._refreshing = None

    async def _another(self, tried: set[int]) -> ModelMetadata:
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
            await asyncio.sleep(_FOLLOW_POLL_S)

    async def _ask_again(self) -> dict[int, ModelMetadata]:
        """The versions a replica lists now (one fetch at a time for every caller)."""
        await asyncio.shield(self._fetch())
        return self._versions or {}

    async def _listed(self, version: int) -> bool:
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
        return await self._client.statuses()

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
            return await self._client.metadata()
        finally:  # its answer counts from when it came
            self._probed_at = time.monotonic()

    async def decode_images(self, meta: ModelMetadata, blobs: Sequence[bytes]) -> np.ndarray:
        """Encoded images → the model's input batch, on a thread: decoding is CPU
        work, and the event loop keeps answering other requests meanwhile."""
        geometry = meta.image_geometry()
        per_image = geometry.height * geometry.width * geometry.channels
        # Before decoding: the batch would be allocated for all of them.
        check_size(meta.image_spec(), len(blobs), len(blobs) * per_image, self._limits.max_rows,
                   self._limits.max_elements)
        limits = self._limits
        self._budget.take(per_image * 4 * len(blobs), f"decoding {len(blobs)} images")
        return await off_loop(decode_images, blobs, geometry, limits.max_image_pixels,
                              limits.max_decoded_bytes, meta.preprocessing,
                              executor=self._decoder)

    def retune(self, settings: CoalesceSettings) -> None:
        """New coalescing settings, for requests from now on."""
        self._coalesce = settings
        for coalescer in self._coalescers.values():
            coalescer.max_calls = self._max_calls()

    def _max_calls(self) -> int | None:
        return self._coalesce.max_calls_in_flight if self._coalesce.enabled else None

    def _coalescer(self, meta: ModelMetadata) -> Coalescer[_Part, Outputs]:
        key = (meta.version, meta.named_signature)
        coalescer = self._coalescers.get(key)
        if coalescer is None:
            coalescer = Coalescer(partial(self._call, *key), 1, self._max_calls())
            self._coalescers[key] = coalescer
        # The model's batch limit may be retuned live: follow it.
        coalescer.max_rows = (self._coalesce.max_rows or meta.max_batch_size
                              or _DEFAULT_COALESCE_ROWS)
        return coalescer

    def _prune(self) -> None:
        """Versions a redeploy dropped keep no coalescer once it is idle."""
        for key in [k for k, c in self._coalescers.items()
                    if k[0] not in (self._versions or {}) and c.idle]:
            del self._coalescers[key]

    def stats(self) -> dict[str, Any]:
        """The model calls formed per served version (calls, requests, rows
        per call), and how many callers' objects were forwarded as they were."""
        self._prune()
        return {"forwarded": self._forwarded,
                "versions": {str(v) if s is None else f"{v}:{s}": c.stats.as_dict()
                             for (v, s), c in sorted(self._coalescers.items(),
                                                     key=lambda kc: (kc[0][0], kc[0][1] or ""))}}

    async def infer(self, meta: ModelMetadata, inputs: Mapping[str, np.ndarray | ray.ObjectRef],
                    pinned: bool = True, timeout_s: float | None = None) -> Answer:
        """Every output of one version for ``inputs`` (by name), checked first
        (so a bad request fails alone), then sent with whatever else waits
        for the model; with the metadata of the version that answered.

        The model's own ``preprocess`` code (if any) runs first, on the
        inputs as decoded, its ``postprocess`` code on the outputs.
        ``ObjectRef`` inputs (a Python caller's own objects) are read in place;
        when every input is one, none must be cast and no preprocess code
        needs the arrays, they are forwarded to the model as they are.
        ``pinned``: the client named the version (or a label). A replica that
        turns the version away may be loading or dropping it while another
        serves it: a pinned request is sent again while a replica lists the
        version (else it is a 404); one that named none moves to another
        version (see ``_another``). Without an answer within
        ``timeout_s`` (default: the limits' ``request_timeout_s``), a 503;
        within an HTTP or gRPC request, its :func:`deadline` bounds it instead
        (unless ``timeout_s`` is given).
        """
        bounded = timeout_s is not None or _deadline.get() is None
        timeout_s = self._limits.request_timeout_s if timeout_s is None else timeout_s
        pre, post = self._processors.pre, self._processors.post
        try:
            async with asyncio.timeout(timeout_s if bounded else None):
                if pre is not None:
                    # (every ObjectRef replaced by its array)
                    read = cast(dict[str, np.ndarray],
                                {**inputs, **await read_objects(_refs(inputs))})
                    processed = await pre(read)
                    self._budget.take(_nbytes(processed), f"{pre.path}'s inputs")
                    inputs = processed
                meta, outputs = await self._follow(meta, inputs, pinned)
                if post is not None:
                    outputs = await post(outputs)
                    self._budget.take(_nbytes(outputs), f"{post.path}'s outputs")
                return Answer(meta, outputs)
        except TimeoutError:
            raise ServiceUnavailable(f"model {self.name!r} did not answer within "
                                     f"{timeout_s:g} s; retry") from None

    async def _follow(self, meta: ModelMetadata, inputs: Mapping[str, np.ndarray | ray.ObjectRef],
                      pinned: bool) -> Answer:
        """The model's answer from the version ``pinned`` names, or from
        whichever one serves a request that named none."""
        tried: set[int] = set()
        signature = meta.named_signature
        if not pinned:
            meta = (await self._split(meta)).signature(signature)
        while True:
            part = await self._part(meta, inputs)
            _check_deadline()
            try:
                return Answer(meta, await self._coalescer(meta).submit(part, part.rows))
            except NotFound:
                if pinned and not await self._listed(meta.version):
                    raise
            if pinned:  # another replica has it: this one is loading or dropping it
                await asyncio.sleep(_FOLLOW_POLL_S)
                continue
            tried.add(meta.version)
            meta = (await self._another(tried)).signature(signature)

    async def _split(self, meta: ModelMetadata) -> ModelMetadata:
        """The version a traffic split sends a request that named none to
        (``meta``, the highest, without a split or while the picked one is
        not served)."""
        picked = self.routing.split()
        return (await self.versions()).get(picked, meta) if picked is not None else meta

    async def _part(self, meta: ModelMetadata,
                    inputs: Mapping[str, np.ndarray | ray.ObjectRef]) -> _Part:
        """``inputs`` checked against ``meta``'s signature, as one part of a call."""
        refs = _refs(inputs)
        views = await read_objects(refs)
        limits = self._limits
        checked = check_inputs({**inputs, **views}, meta, limits.max_rows, limits.max_elements)
        rows = rows_of(checked)
        if refs and len(refs) == len(checked) and all(
                np.may_share_memory(checked[n], views[n]) for n in refs):  # none cast
            return _Part(rows, refs=refs, arrived=arrival_time())
        return _Part(rows, inputs=checked, arrived=arrival_time())

    async def _call(self, version: int, signature: str | None,
                    parts: list[_Part]) -> list[Outputs | ServeError]:
        """One model call for ``parts``, each part's answer in order.

        When the replica died while it held the call (``ReplicaDied``), a part
        of it, or a request it shared a TensorFlow batch with on the replica,
        may be what killed it: each part is sent again alone, one at a time,
        to run outside any batch (so a second crash takes no other request
        with it); a part whose replica died while running it alone is not
        sent again.
        """
        self._metrics.coalesced(self.name, sum(p.rows for p in parts))
        for part in parts:
            self._metrics.preprocessed(self.name, part.arrived)
        try:
            return await self._send(version, signature, parts)
        except ReplicaDied:
            pass
        answers: list[Outputs | ServeError] = []
        for part in parts:
            try:
                answers += await self._send(version, signature, [part], isolated=True)
            except ReplicaDied:
                answers.append(_died_alone(self.name))
            except ServeError as exc:
                answers.append(exc)
        return answers

    async def _send(self, version: int, signature: str | None, parts: list[_Part],
                    isolated: bool = False) -> list[Outputs | ServeError]:
        local = [p.inputs for p in parts if p.inputs is not None]
        forwarded = [p.refs for p in parts if p.refs is not None]
        if not isolated:  # (a re-send forwards the same objects again)
            self._forwarded += len(forwarded)
        with self._metrics.inference(self.name):
            answers = await self._client.call(version, local, forwarded, isolated, signature)
        from_local, from_forwarded = iter(answers[:len(local)]), iter(answers[len(local):])
        return [next(from_forwarded if p.refs is not None else from_local) for p in parts]


def _nbytes(arrays: Mapping[str, np.ndarray]) -> int:
    """What user code's arrays hold, for the ingress's memory budget."""
    return sum(a.nbytes for a in arrays.values())


def _refs(inputs: Mapping[str, object]) -> dict[str, ray.ObjectRef]:
    return {n: v for n, v in inputs.items() if isinstance(v, ray.ObjectRef)}


def _died_alone(model: str) -> ModelFailed:
    return ModelFailed(f"the replica of model {model!r} died while running this request "
                       "alone; it is not sent again, since it is what crashed the replica")


class ModelRegistry:
    """The served models in config order; the first is the default."""

    def __init__(self, clients: Mapping[str, DeploymentClient], limits: InputLimits,
                 metrics: IngressMetrics, routing: Mapping[str, Routing] | None = None,
                 processors: Mapping[str, Processors] | None = None,
                 pipelines: Sequence[Plan] = ()) -> None:
        """``processors``: each model's (or pipeline's) own pre/postprocessing
        code (none if left out); ``pipelines``: served as models, after them."""
        processors = processors or {}
        if unknown := sorted(set(processors) - {*clients, *(p.name for p in pipelines)}):
            raise ValueError(f"code given for models that are not served: {unknown}")
        # One bounded pool decodes every model's images: concurrent requests
        # wait for a thread rather than multiply the memory decoding takes.
        decoder = ThreadPoolExecutor(limits.decode_threads, thread_name_prefix="decode")
        self.budget = MemoryBudget(limits.max_inflight_bytes)
        self._models = {name: ModelEndpoint(name, client, limits, metrics, decoder, self.budget,
                                            processors.get(name, Processors()))
                        for name, client in clients.items()}
        for plan in pipelines:  # reaching its models as clients, composing their metadata
            self._models[plan.name] = ModelEndpoint(
                plan.name, PipelineClient(plan, clients, self._models), limits, metrics,
                decoder, self.budget, processors.get(plan.name, Processors()))
        self.route(routing or {})
        self.default = next(iter(self._models))

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def retune(self, settings: CoalesceSettings) -> None:
        for model in self._models.values():
            model.retune(settings)

    def route(self, routing: Mapping[str, Routing]) -> None:
        """New labels and traffic splits, by model (a model left out has none)."""
        if unknown := sorted(set(routing) - set(self._models)):
            raise ValueError(f"labels given for models that are not served: {unknown}")
        for name, model in self._models.items():
            model.routing = routing.get(name, Routing())

    def stats(self) -> dict[str, Any]:
        """Per model and version, the calls that coalescing formed."""
        return {name: model.stats() for name, model in self._models.items()}

    def get(self, name: str | None = None) -> ModelEndpoint:
        """A model by name (default: the first configured), or a 404."""
        model = self._models.get(self.default if name is None else name)
        if model is None:
            raise NotFound(f"Servable not found for request: Latest({clip(str(name))}): "
                           f"no model named {clip(str(name))!r} (served: "
                           f"{', '.join(self._models)})")
        return model

    async def resolve(self, name: str | None, version: str | int | None = None,
                      label: str | None = None) -> tuple[ModelEndpoint, ModelMetadata]:
        """A model by name (default: the first) and one of its versions, by
        number or label (default: the highest), or a 404 naming what is served."""
        endpoint = self.get(name)
        return endpoint, await endpoint.version(version, label)

    async def ready(self) -> list[ModelMetadata]:
        """Each model's highest version, asked of its replicas now."""
        answers = await asyncio.gather(*(m.check_ready() for m in self._models.values()))
        return list(answers)
