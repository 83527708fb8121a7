"""The model deployment: one SavedModel per replica, loaded once, batched.

Callers (the preprocessor, or any Ray job holding a handle) send a numpy batch
or an ``ObjectRef`` to one; Ray resolves a top-level ``ObjectRef`` argument
to a read-only, zero-copy view of the object store's buffer before
``__call__`` runs. Concurrent requests are merged row-wise by ``serve.batch``
and, when XLA needs static shapes, padded to a bounded set of bucket sizes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import ray
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from deployments.batching import (
    MAX_BATCH_SIZE,
    BatchSizing,
    Outputs,
    bucket_for,
    bucket_sizes,
    chunk_rows,
    concat_outputs,
    gains,
    merge_rows,
    split_rows,
)
from deployments.codecs.errors import ModelFailed, NotFound, ServeError
from deployments.config import DeviceArgs, ModelArgs
from deployments.device import apply_device_plan, plan_device
from deployments.metrics import ModelMetrics
from deployments.shipping import ShippedModel, receive
from deployments.signature import ModelMetadata, check_batch

if TYPE_CHECKING:
    from deployments.runner import SavedModelRunner

logger = logging.getLogger("ray.serve")

# max_batch_size auto: each batch size is timed for at least this long (and
# three calls); sizes stop growing once one call takes longer than the last.
_SIZING_SECONDS = 0.2
_SIZING_MAX_CALL_S = 1.0


class BatchSettings(BaseModel):
    """The model deployment's ``user_config``: retuned live, without restarts."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)] | Literal["auto"] = Field(
        32, description="auto: each replica times its batch sizes at warm-up and takes the "
                        "smallest within a few percent of its best throughput")
    batch_wait_timeout_s: float = Field(0.0, ge=0, le=10)


def _initial_settings() -> BatchSettings:
    """The ``user_config`` this replica starts with, so the constructor warms up
    the right buckets (Serve calls ``reconfigure`` with it only afterwards).
    Serve's own ``serve.batch`` reads the deployment config the same way."""
    config = getattr(serve.get_replica_context(), "_deployment_config", None)
    return BatchSettings.model_validate(getattr(config, "user_config", None) or {})


def _total_rows(arrays: list[np.ndarray]) -> int:
    return sum(len(a) for a in arrays)


class ServedVersion:
    """One loaded version of the model with its own batch queue.

    Each version gets its own ``serve.batch`` queue (the decorator keeps one
    queue per decorated function), so a batch never mixes versions.
    """

    def __init__(self, runner: SavedModelRunner, executor: ThreadPoolExecutor,
                 settings: BatchSettings) -> None:
        self.runner = runner
        self._executor = executor
        self._settings = settings
        self._batch_seconds = 0.0  # moving average of one model call
        self.batch_rows: Counter[int] = Counter()
        self.buckets: list[int] = []
        self.sizing: BatchSizing | None = None  # measured when max_batch_size is auto
        self._batch = serve.batch(batch_size_fn=_total_rows)(self._run_batch)
        self._metrics = ModelMetrics(runner.metadata.name, runner.metadata.version)
        self._waiting: set[int] = set()  # ids of the chunks queued for a batch

    @property
    def max_batch_size(self) -> int:
        """The configured limit, or the one measured for ``auto``."""
        if self._settings.max_batch_size == "auto":
            assert self.sizing is not None, "auto batch size used before it was measured"
            return self.sizing.picked
        return self._settings.max_batch_size

    def _zeros(self, rows: int) -> np.ndarray:
        spec = self.runner.metadata.input
        return np.zeros((rows, *spec.shape[1:]), dtype=spec.dtype)

    def warm_up(self, sizes: list[int]) -> None:
        """One call per batch size, then a timed warm call for the busy wait.

        Runs on the model's executor thread, which runs every batch: TF's
        per-thread state is ready before the first real request.
        """
        for rows in [*sizes, sizes[0]]:
            started = time.perf_counter()
            self.runner.run(self._zeros(rows))
        self._batch_seconds = time.perf_counter() - started

    def measure_batch_sizes(self) -> BatchSizing:
        """Time each power-of-two batch size on this replica's hardware (on the
        executor thread) and pick the smallest within a few percent of the best
        throughput; larger sizes are tried only while they still gain."""
        rates: dict[int, float] = {}
        for size in bucket_sizes(MAX_BATCH_SIZE):
            batch = self._zeros(size)
            self.runner.run(batch)  # a new shape's first call sets up its kernels
            calls, started = 0, time.perf_counter()
            while calls < 3 or time.perf_counter() - started < _SIZING_SECONDS:
                self.runner.run(batch)
                calls += 1
            seconds = (time.perf_counter() - started) / calls
            rates[size] = size / seconds
            if seconds > _SIZING_MAX_CALL_S or not gains(rates):
                break
        self.sizing = BatchSizing.pick(rates)
        return self.sizing

    def new_buckets(self, settings: BatchSettings) -> list[int]:
        limit = self.sizing.picked if settings.max_batch_size == "auto" else \
            settings.max_batch_size
        return [b for b in bucket_sizes(limit) if b not in self.buckets]

    def apply(self, settings: BatchSettings) -> None:
        """Switch to ``settings``; their buckets must be warm already."""
        self._settings = settings
        # Buckets only grow: a batch formed under an earlier, larger limit
        # still finds its (already warm) bucket.
        self.buckets = sorted({*self.buckets, *bucket_sizes(self.max_batch_size)})
        self._batch.set_max_batch_size(self.max_batch_size)
        self._batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    async def infer(self, rows: np.ndarray) -> Outputs:
        """Any number of rows, in chunks of at most ``max_batch_size``."""
        chunks = chunk_rows(rows, self.max_batch_size)
        return concat_outputs(await asyncio.gather(*(self._infer_chunk(c) for c in chunks)))

    async def _infer_chunk(self, chunk: np.ndarray) -> Outputs:
        self._queue(add=[chunk])
        try:
            return await self._batch(chunk)
        except RuntimeError:
            # Serve's batcher refuses an item over max_batch_size: it was
            # lowered live after this chunk was cut. Cut it again.
            if len(chunk) <= self.max_batch_size:
                raise
            self._queue(remove=[chunk])  # its pieces queue instead
            return await self.infer(chunk)
        finally:
            self._queue(remove=[chunk])  # also if cancelled while queued

    def _queue(self, add: Sequence[np.ndarray] = (), remove: Sequence[np.ndarray] = ()) -> None:
        self._waiting.update(id(a) for a in add)
        self._waiting.difference_update(id(a) for a in remove)
        self._metrics.queue_length(len(self._waiting))

    async def _run_batch(self, arrays: list[np.ndarray]) -> list[Outputs]:
        self._queue(remove=arrays)
        counts = [len(a) for a in arrays]
        rows = sum(counts)
        self.batch_rows[rows] += 1
        padded = bucket_for(rows, self.buckets) if self.runner.static_shapes else rows
        merged = merge_rows(arrays, padded)
        # Serve forms the next batch while this one runs, closing it after
        # batch_wait_timeout_s: a few ms would cut it to the one or two
        # requests that arrived by then, to queue behind this batch anyway.
        # While the model is busy, wait as long as a batch takes instead, so
        # the next one fills with what arrives meanwhile (like Triton's and TF
        # Serving's batchers, which form a batch when the model is free).
        self._batch.set_batch_wait_timeout_s(
            max(self._settings.batch_wait_timeout_s, self._batch_seconds))
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            outputs = await loop.run_in_executor(self._executor, self.runner.run, merged)
        finally:
            self._batch.set_batch_wait_timeout_s(self._settings.batch_wait_timeout_s)
        seconds = loop.time() - started
        self._metrics.batch(rows, seconds)
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
        return split_rows(outputs, counts)


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
class ModelDeployment:
    """Every configured version of one model; the app names it after the model."""

    def __init__(self, model: ModelArgs, device: DeviceArgs,
                 shipped: ShippedModel | None = None) -> None:
        context = ray.get_runtime_context()
        resources = context.get_assigned_resources()
        plan = plan_device(
            num_cpus=resources.get("CPU", 1.0),
            gpu_ids=context.get_accelerator_ids().get("GPU", []),
            gpu_fraction=resources.get("GPU", 0.0),
            gpu_memory=device.gpu_memory,
            gpu_total_memory_mb=device.gpu_total_memory_mb,
        )
        apply_device_plan(plan)
        # Imported here, after the device plan: the preprocessor and the
        # `serve run` driver import this module too and need no TensorFlow.
        from deployments.runner import SavedModelRunner

        self._plan = plan
        # TF releases the GIL while it computes; running it on a thread keeps
        # the replica's event loop free to form the next batch meanwhile.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tf")
        self._settings = _initial_settings()
        if shipped is not None:  # load this node's copy, not the source
            model = model.moved_to(receive(shipped))
        self._versions: dict[int, ServedVersion] = {}
        self._paths = model.version_dirs()
        for version, path in self._paths.items():
            runner = SavedModelRunner(model, version, path, plan.device)
            served = ServedVersion(runner, self._executor, self._settings)
            self._executor.submit(self._prepare, served, self._settings).result()
            served.apply(self._settings)
            self._versions[version] = served
            logger.info("model %r version %d loaded from %s on %s",
                        model.name, version, path, plan.device)
        self._latest = max(self._versions)

    async def reconfigure(self, user_config: dict) -> None:
        """Retune batching live; new bucket sizes are warmed up before use.

        Serve also calls this right after the constructor, before the replica
        takes traffic, so the first real request finds every batch shape
        traced and its kernels set up.
        """
        settings = BatchSettings.model_validate(user_config)
        loop = asyncio.get_running_loop()
        for served in self._versions.values():
            await loop.run_in_executor(self._executor, self._prepare, served, settings)
            served.apply(settings)
        self._settings = settings
        logger.info("batching: %s", settings)

    @staticmethod
    def _prepare(served: ServedVersion, settings: BatchSettings) -> None:
        """Measure batch sizes for ``auto`` (once) and warm up the buckets that
        ``settings`` add, on the model's own thread, before they serve."""
        if settings.max_batch_size == "auto" and served.sizing is None:
            sizing = served.measure_batch_sizes()
            logger.info("model %r version %d: max_batch_size auto → %d (%s)",
                        served.runner.metadata.name, served.runner.metadata.version,
                        sizing.picked, sizing.describe()["why"])
        if new := served.new_buckets(settings):
            served.warm_up(new)

    def metadata(self) -> dict[int, ModelMetadata]:
        """Every served version's signature and current batch limit, by version."""
        return {v: replace(served.runner.metadata, max_batch_size=served.max_batch_size)
                for v, served in self._versions.items()}

    def stats(self, version: int | None = None) -> dict[str, Any]:
        """What this replica runs on and the batches it formed (rows → count)."""
        served = self._versions[version or self._latest]
        return {
            "pid": os.getpid(),
            "device": self._plan.device,
            "intra_op_threads": self._plan.intra_op_threads,
            "max_batch_size": served.max_batch_size,
            "auto_batch_size": served.sizing and served.sizing.describe(),
            "batch_wait_timeout_s": self._settings.batch_wait_timeout_s,
            "versions": sorted(self._versions),
            "path": str(self._paths[version or self._latest]),
            "buckets": served.buckets,
            "traces": served.runner.traces,
            "batch_rows": dict(sorted(served.batch_rows.items())),
        }

    def _served(self, version: int | None) -> ServedVersion:
        served = self._versions.get(version or self._latest)
        if served is None:
            raise NotFound(f"model version {version} is not served")
        return served

    async def __call__(self, batch: np.ndarray, version: int | None = None) -> Outputs:
        """Run a batch of any size on a version (default: the highest);
        returns every output by name."""
        served = self._served(version)
        return await served.infer(check_batch(batch, served.runner.metadata.input))

    async def infer_parts(self, local: list[np.ndarray] | None, forwarded: list[ray.ObjectRef],
                          version: int | None = None) -> list[Outputs | ServeError]:
        """The ingress's coalesced call: several requests' batches, each answered
        on its own (its outputs, or the error that applies to it alone).

        ``local`` arrives resolved (one object, put once by the ingress: each
        array a read-only view of it); ``forwarded`` are callers' own objects,
        passed on unresolved by the ingress and read here in place. Each part
        joins the version's batch queue by itself, so the parts of one call
        share batches with each other and with other callers' requests.
        """
        served = self._served(version)
        spec = served.runner.metadata.input
        arrays = [*(local or ()), *await asyncio.gather(*forwarded)]

        async def answer(array: np.ndarray) -> Outputs | ServeError:
            try:
                return await served.infer(check_batch(array, spec))
            except ServeError as exc:
                return exc
            except Exception as exc:  # a model fault: this part's answer, not the call's
                logger.exception("model %r failed on a batch", spec.name)
                return ModelFailed(f"model {served.runner.metadata.name!r} failed: "
                                   f"{type(exc).__name__}")

        return list(await asyncio.gather(*(answer(a) for a in arrays)))
