"""The one layer between the protocols and the models.

A protocol module parses its wire format, asks :meth:`DataPlane.resolve` for
the model, version and signature its request names, and hands the parsed
inputs to :meth:`DataPlane.infer`; it encodes the :class:`Answer`. Everything
between is here, the same for every protocol and for Python handle calls:
encoded images decoded against the memory budget, the model's own
pre/postprocessing code, the checks against the signature, the deadline,
following a redeploy or a traffic split, and the call through the model's
dispatcher (``dispatch.py``), coalesced with every other caller's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import cast

import numpy as np
import ray

from deployments.codecs.image import decode_images
from deployments.codecs.numbers import version_number
from deployments.config import InputLimits
from deployments.errors import BadRequest, NotFound, ServiceUnavailable, clip
from deployments.ingress.auth import load_error
from deployments.ingress.budget import MemoryBudget, off_loop
from deployments.ingress.catalog import FOLLOW_POLL_S
from deployments.ingress.deadline import check_deadline, within_deadline
from deployments.ingress.dispatch import Part
from deployments.ingress.payload_log import PayloadLogs, Pending
from deployments.ingress.registry import ModelRegistry, ServedModel
from deployments.ingress.request import Answer, EncodedImages, RequestInputs, Target
from deployments.metrics import arrival_time
from deployments.objects import read_objects
from deployments.signature import ModelMetadata, check_inputs, check_size
from deployments.types import rows_of
from deployments.versions import VersionStatus


class DataPlane:
    """Every protocol's way to the models (see the module's docstring)."""

    def __init__(self, registry: ModelRegistry, limits: InputLimits,
                 payload_log: PayloadLogs | None = None) -> None:
        self.payload_log = payload_log or PayloadLogs()
        self.serve(registry)
        self.budget = MemoryBudget(limits.max_inflight_bytes)
        self._limits = limits
        # One bounded pool decodes every model's images: concurrent requests
        # wait for a thread rather than multiply the memory decoding takes.
        self._decoder = ThreadPoolExecutor(limits.decode_threads, thread_name_prefix="decode")

    def serve(self, registry: ModelRegistry) -> None:
        """Serves ``registry``'s models from now on (models added or removed
        live); a request that already holds the old one's objects finishes on them.
        Payload logging takes settings for these models only."""
        self.registry = registry
        self.payload_log.serving(frozenset(registry.names))

    async def resolve(self, target: Target) -> ModelMetadata:
        """The version and signature ``target`` names, or a 404 naming what is
        served (a 400 for an unknown label or signature). A signature not
        known yet (None: in a body still to read) is the caller's to pick."""
        catalog = self.registry.get(target.model).catalog
        meta = await catalog.version(target.version, target.label)
        return meta if target.signature is None else meta.signature(target.signature)

    async def versions(self, model: str | None) -> dict[int, ModelMetadata]:
        """Every served version of ``model`` (none: the default)."""
        return await self.registry.get(model).catalog.versions()

    async def statuses(self, target: Target) -> list[VersionStatus]:
        """Every version's state; with a version or label, that version's (TF
        Serving answers 404 for one it has never heard of). A load error is as
        the caller may read it (:func:`deployments.ingress.auth.load_error`)."""
        catalog = self.registry.get(target.model).catalog
        statuses = [replace(s, error=load_error(s.error)) for s in await catalog.statuses()]
        wanted: int | None
        if target.label is not None:
            wanted, named = catalog.labeled(target.label), target.label
        elif target.version is not None:
            version = target.version
            wanted = version if isinstance(version, int) else version_number(version)
            named = str(version)
        else:
            return statuses
        picked = [s for s in statuses if s.version == wanted]
        if not picked:
            raise NotFound(f"model {catalog.name!r} has no version {clip(named)!r} (its "
                           f"versions: {', '.join(str(s.version) for s in statuses) or 'none'})")
        return picked

    async def model_ready(self, model: str | None, version: str | int | None = None) -> None:
        """A 404 unless ``version`` is served, a 503 unless a replica answered just now."""
        await self.registry.get(model).catalog.check_ready(version)

    async def ready(self) -> list[ModelMetadata]:
        """Each model's highest version, asked of its replicas now (a 503 unless all answer)."""
        return list(await asyncio.gather(*(self.registry.get(name).catalog.check_ready()
                                           for name in self.registry.names)))

    async def infer(self, meta: ModelMetadata, inputs: RequestInputs, pinned: bool = True,
                    timeout_s: float | None = None) -> Answer:
        """Every output of ``meta``'s version and signature for ``inputs``;
        with the metadata of the version that answered.

        Encoded images are decoded first, then the model's own ``preprocess``
        code (if any) runs on the inputs, which are checked against the
        signature (so a bad request fails alone) and sent with whatever else
        waits for the model; its ``postprocess`` code runs on the outputs.
        ``ObjectRef`` inputs (a Python caller's own objects) are read in place;
        when every input is one, none must be cast and no preprocess code
        needs the arrays, they are forwarded to the model as they are.
        ``pinned``: the client named the version (or a label). A replica that
        turns the version away may be loading or dropping it while another
        serves it: a pinned request is sent again while a replica lists the
        version (else it is a 404); one that named none moves to another
        version (``VersionCatalog.another``). Without an answer within
        ``timeout_s`` (default: the limits' ``request_timeout_s``), a 503;
        within an HTTP or gRPC request, its deadline bounds it instead
        (unless ``timeout_s`` is given). A request its model's payload log
        draws is recorded after its answer or error (``payload_log.py``).
        """
        if meta.unnamed_refused:  # the default, never looked up (a protocol naming none)
            meta.signature(None)
        pending = self.payload_log.sample(meta.name)
        if pending is None:
            return await self._infer(meta, inputs, pinned, timeout_s, None)
        try:
            answer = await self._infer(meta, inputs, pinned, timeout_s, pending)
        except BaseException as exc:
            self.payload_log.finish(pending, meta, pending.inputs or inputs, None, exc)
            raise
        self.payload_log.finish(pending, answer.meta, pending.inputs or {}, answer.outputs, None)
        return answer

    async def _infer(self, meta: ModelMetadata, inputs: RequestInputs, pinned: bool,
                     timeout_s: float | None, pending: Pending | None) -> Answer:
        model = self.registry.get(meta.name)
        bounded = timeout_s is not None or not within_deadline()
        timeout_s = self._limits.request_timeout_s if timeout_s is None else timeout_s
        pre, post = model.processors.pre, model.processors.post
        try:
            async with asyncio.timeout(timeout_s if bounded else None):
                decoded: Mapping[str, np.ndarray | ray.ObjectRef] = await self._decode(meta, inputs)
                # Decoded pixels are finite by the preprocessing's own check.
                finite = {n for n, v in inputs.items() if isinstance(v, EncodedImages)}
                if pre is not None:
                    # (every ObjectRef replaced by its array)
                    read = cast(dict[str, np.ndarray],
                                {**decoded, **await read_objects(_refs(decoded))})
                    processed = await pre(read)
                    self.budget.take(_nbytes(processed), f"{pre.path}'s inputs")
                    decoded, finite = processed, set()
                if pending is not None:
                    pending.inputs = decoded  # what the model is asked, for its record
                meta, outputs = await self._follow(model, meta, decoded, pinned, finite)
                if post is not None:
                    outputs = await post(outputs)
                    self.budget.take(_nbytes(outputs), f"{post.path}'s outputs")
                return Answer(meta, outputs)
        except TimeoutError:
            raise ServiceUnavailable(f"model {model.name!r} did not answer within "
                                     f"{timeout_s:g} s; retry") from None

    async def _decode(self, meta: ModelMetadata, inputs: RequestInputs
                      ) -> dict[str, np.ndarray | ray.ObjectRef]:
        """``inputs`` with encoded images decoded into the model's input batch."""
        decoded: dict[str, np.ndarray | ray.ObjectRef] = {}
        for name, value in inputs.items():
            decoded[name] = (await self.decode_images(meta, value)
                             if isinstance(value, EncodedImages) else value)
        return decoded

    async def decode_images(self, meta: ModelMetadata, images: EncodedImages) -> np.ndarray:
        """Encoded images → the model's input batch, on a thread: decoding is
        CPU work, and the event loop keeps answering other requests meanwhile."""
        shape = images.shape
        if shape is not None and (len(shape) not in (1, 2) or shape[1:] not in ((), (1,))):
            raise BadRequest(f"input {meta.image_input!r}: encoded images take shape [N] or "
                             f"[N, 1] (one image each), got {list(shape)}")
        geometry = meta.image_geometry()
        blobs = images.blobs
        per_image = geometry.height * geometry.width * geometry.channels
        limits = self._limits
        # Before decoding: the batch would be allocated for all of them.
        check_size(meta.image_spec(), len(blobs), len(blobs) * per_image, limits.max_rows,
                   limits.max_elements)
        self.budget.take(per_image * 4 * len(blobs), f"decoding {len(blobs)} images")
        return await off_loop(decode_images, blobs, geometry, limits.max_image_pixels,
                              limits.max_decoded_bytes, meta.preprocessing,
                              executor=self._decoder)

    async def _follow(self, model: ServedModel, meta: ModelMetadata,
                      inputs: Mapping[str, np.ndarray | ray.ObjectRef], pinned: bool,
                      finite: Collection[str] = ()) -> Answer:
        """The model's answer from the version ``pinned`` names, or from
        whichever one serves a request that named none."""
        catalog = model.catalog
        tried: set[int] = set()
        if not pinned:
            meta = await catalog.split(meta)
        while True:
            part = await self._part(meta, inputs, finite)
            check_deadline()
            try:
                return Answer(meta, await model.dispatcher.submit(meta, part))
            except NotFound:
                if pinned and not await catalog.listed(meta.version):
                    raise
            if pinned:  # another replica has it: this one is loading or dropping it
                await asyncio.sleep(FOLLOW_POLL_S)
                continue
            tried.add(meta.version)
            meta = (await catalog.another(tried)).signature(meta.named_signature)

    async def _part(self, meta: ModelMetadata, inputs: Mapping[str, np.ndarray | ray.ObjectRef],
                    finite: Collection[str] = ()) -> Part:
        """``inputs`` checked against ``meta``'s signature, as one part of a call
        (``finite``: inputs whose values need no scan for NaN)."""
        refs = _refs(inputs)
        views = await read_objects(refs)
        limits = self._limits
        checked = check_inputs({**inputs, **views}, meta, limits.max_rows, limits.max_elements,
                               finite)
        rows = rows_of(checked)
        if refs and len(refs) == len(checked) and all(
                np.may_share_memory(checked[n], views[n]) for n in refs):  # none cast
            return Part(rows, refs=refs, arrived=arrival_time())
        return Part(rows, inputs=checked, arrived=arrival_time())


def _nbytes(arrays: Mapping[str, np.ndarray]) -> int:
    """What user code's arrays hold, for the ingress's memory budget."""
    return sum(a.nbytes for a in arrays.values())


def _refs(inputs: Mapping[str, object]) -> dict[str, ray.ObjectRef]:
    return {n: v for n, v in inputs.items() if isinstance(v, ray.ObjectRef)}
