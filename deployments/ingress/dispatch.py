"""The calls into one model's replicas: checked requests coalesced per
version and signature (``coalescing.py``) into one call each, and a call
whose replica died re-sent part by part, so a request that kills a replica
takes no other with it."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import ray

from deployments.errors import ModelFailed, ServeError
from deployments.ingress.coalescing import Coalescer, CoalesceSettings
from deployments.metrics import IngressMetrics
from deployments.signature import ModelMetadata
from deployments.types import Inputs, Outputs

# Rows per coalesced call while the model's own max_batch_size is not known.
_DEFAULT_COALESCE_ROWS = 32


class ReplicaDied(Exception):
    """A model replica died while it held a call, and not because it was
    stopped or its node went away: the call's requests may be what killed it."""


class ModelCaller(Protocol):
    """How a dispatcher reaches its model's replicas (Ray's: ``model_client.py``;
    a pipeline's: ``pipeline_client.py``)."""

    async def call(self, version: int, local: list[Inputs],
                   forwarded: list[dict[str, ray.ObjectRef]],
                   isolated: bool = False,
                   signature: str | None = None) -> list[Outputs | ServeError]:
        """Run each part (``local`` ones first) on ``signature`` (none: the
        default), answering each on its own (``isolated``: each in TensorFlow
        calls of its own, outside the batch queue); ``ReplicaDied`` when the
        replica died holding the call."""
        ...


@dataclass(frozen=True)
class Part:
    """One request's checked inputs: arrays to send with their batch-mates, or
    a caller's own objects to forward as they are."""

    rows: int
    inputs: Inputs | None = None
    refs: dict[str, ray.ObjectRef] | None = None
    arrived: float | None = None  # for the preprocess-time metric


class Dispatcher:
    """One coalescer per version and signature in use, and the calls they make."""

    def __init__(self, name: str, client: ModelCaller, metrics: IngressMetrics) -> None:
        self.name = name
        self._client = client
        self._metrics = metrics
        self._settings = CoalesceSettings()
        # One per version and signature (none: the default) in use.
        self._coalescers: dict[tuple[int, str | None], Coalescer[Part, Outputs]] = {}
        self._forwarded = 0

    async def submit(self, meta: ModelMetadata, part: Part) -> Outputs:
        """``part``'s outputs from ``meta``'s version and signature, sent with
        whatever else waits for them."""
        return await self._coalescer(meta).submit(part, part.rows)

    def retune(self, settings: CoalesceSettings) -> None:
        """New coalescing settings, for requests from now on."""
        self._settings = settings
        for coalescer in self._coalescers.values():
            coalescer.max_calls = self._max_calls()

    def _max_calls(self) -> int | None:
        return self._settings.max_calls_in_flight if self._settings.enabled else None

    def _coalescer(self, meta: ModelMetadata) -> Coalescer[Part, Outputs]:
        key = (meta.version, meta.named_signature)
        coalescer = self._coalescers.get(key)
        if coalescer is None:
            coalescer = Coalescer(partial(self._call, *key), 1, self._max_calls())
            self._coalescers[key] = coalescer
        # The model's batch limit may be retuned live: follow it.
        coalescer.max_rows = (self._settings.max_rows or meta.max_batch_size
                              or _DEFAULT_COALESCE_ROWS)
        return coalescer

    def prune(self, served: Collection[int]) -> None:
        """Versions a redeploy dropped keep no coalescer once it is idle."""
        for key in [k for k, c in self._coalescers.items() if k[0] not in served and c.idle]:
            del self._coalescers[key]

    def stats(self) -> dict[str, Any]:
        """The model calls formed per version (calls, requests, rows per
        call), and how many callers' objects were forwarded as they were."""
        return {"forwarded": self._forwarded,
                "versions": {str(v) if s is None else f"{v}:{s}": c.stats.as_dict()
                             for (v, s), c in sorted(self._coalescers.items(),
                                                     key=lambda kc: (kc[0][0], kc[0][1] or ""))}}

    async def _call(self, version: int, signature: str | None,
                    parts: list[Part]) -> list[Outputs | ServeError]:
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
                answers.append(ModelFailed(
                    f"the replica of model {self.name!r} died while running this request "
                    "alone; it is not sent again, since it is what crashed the replica"))
            except ServeError as exc:
                answers.append(exc)
        return answers

    async def _send(self, version: int, signature: str | None, parts: list[Part],
                    isolated: bool = False) -> list[Outputs | ServeError]:
        local = [p.inputs for p in parts if p.inputs is not None]
        forwarded = [p.refs for p in parts if p.refs is not None]
        if not isolated:  # (a re-send forwards the same objects again)
            self._forwarded += len(forwarded)
        with self._metrics.inference(self.name):
            answers = await self._client.call(version, local, forwarded, isolated, signature)
        from_local, from_forwarded = iter(answers[:len(local)]), iter(answers[len(local):])
        return [next(from_forwarded if p.refs is not None else from_local) for p in parts]
