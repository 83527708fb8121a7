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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import ray
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from deployments.batching import (
    Outputs,
    bucket_for,
    bucket_sizes,
    chunk_rows,
    concat_outputs,
    merge_rows,
    split_rows,
)
from deployments.config import DeviceArgs, ModelArgs
from deployments.device import apply_device_plan, plan_device
from deployments.signature import ModelMetadata, check_batch

logger = logging.getLogger("ray.serve")


class BatchSettings(BaseModel):
    """The model deployment's ``user_config``: retuned live, without restarts."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(32, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.0, ge=0, le=10)


def _initial_settings() -> BatchSettings:
    """The ``user_config`` this replica starts with, so the constructor warms up
    the right buckets (Serve calls ``reconfigure`` with it only afterwards).
    Serve's own ``serve.batch`` reads the deployment config the same way."""
    config = getattr(serve.get_replica_context(), "_deployment_config", None)
    return BatchSettings.model_validate(getattr(config, "user_config", None) or {})


def _total_rows(arrays: list[np.ndarray]) -> int:
    return sum(len(a) for a in arrays)


@serve.deployment(name="Model", max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
class ModelDeployment:
    def __init__(self, model: ModelArgs, device: DeviceArgs) -> None:
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

        self._runner = SavedModelRunner(
            model.name, model.path, model.signature_name, model.scores_output,
            model.labels_path, plan.device, jit_compile=model.jit_compile,
        )
        self._plan = plan
        # TF releases the GIL while it computes; running it on a thread keeps
        # the replica's event loop free to form the next batch meanwhile.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tf")
        self._batch_rows: Counter[int] = Counter()
        self._buckets: list[int] = []
        self._batch_seconds = 0.0  # moving average of one model call
        settings = _initial_settings()
        # Warm up on the thread that will run every batch: it starts now, and
        # TF's per-thread state is ready before the first real request.
        self._executor.submit(self._warm_up, bucket_sizes(settings.max_batch_size)).result()
        self._set(settings)
        logger.info("model %r loaded from %s on %s", model.name, model.path, plan.device)

    async def reconfigure(self, user_config: dict) -> None:
        """Retune batching live; new bucket sizes are warmed up before use.

        Serve also calls this right after the constructor, before the replica
        takes traffic, so the first real request finds every batch shape
        traced and its kernels set up.
        """
        settings = BatchSettings.model_validate(user_config)
        new = [b for b in bucket_sizes(settings.max_batch_size) if b not in self._buckets]
        if new:  # on the model's own thread: never beside a running batch
            await asyncio.get_running_loop().run_in_executor(self._executor, self._warm_up, new)
        self._set(settings)

    def _set(self, settings: BatchSettings) -> None:
        self._settings = settings
        # Buckets only grow: a batch formed under an earlier, larger limit
        # still finds its (already warm) bucket.
        self._buckets = sorted({*self._buckets, *bucket_sizes(settings.max_batch_size)})
        self._infer_batch.set_max_batch_size(settings.max_batch_size)
        self._infer_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        logger.info("batching: %s, buckets %s", settings, self._buckets)

    def _warm_up(self, sizes: list[int]) -> None:
        """One call per batch size, then a timed warm call for the busy wait."""
        spec = self._runner.metadata.input
        for rows in [*sizes, sizes[0]]:
            started = time.perf_counter()
            self._runner.run(np.zeros((rows, *spec.shape[1:]), dtype=spec.dtype))
        self._batch_seconds = time.perf_counter() - started

    def metadata(self) -> ModelMetadata:
        return self._runner.metadata

    def stats(self) -> dict[str, Any]:
        """What this replica runs on and the batches it formed (rows → count)."""
        return {
            "pid": os.getpid(),
            "device": self._plan.device,
            "intra_op_threads": self._plan.intra_op_threads,
            "max_batch_size": self._settings.max_batch_size,
            "batch_wait_timeout_s": self._settings.batch_wait_timeout_s,
            "buckets": self._buckets,
            "traces": self._runner.traces,
            "batch_rows": dict(sorted(self._batch_rows.items())),
        }

    async def __call__(self, batch: np.ndarray) -> Outputs:
        """Run the model on a batch of any size; returns every output by name."""
        batch = check_batch(batch, self._runner.metadata.input)
        return await self._infer_rows(batch)

    async def _infer_rows(self, rows: np.ndarray) -> Outputs:
        """Any number of rows, in chunks of at most ``max_batch_size``."""
        chunks = chunk_rows(rows, self._settings.max_batch_size)
        return concat_outputs(await asyncio.gather(*(self._infer_chunk(c) for c in chunks)))

    async def _infer_chunk(self, chunk: np.ndarray) -> Outputs:
        try:
            return await self._infer_batch(chunk)
        except RuntimeError:
            # Serve's batcher refuses an item over max_batch_size: it was
            # lowered live after this chunk was cut. Cut it again.
            if len(chunk) <= self._settings.max_batch_size:
                raise
            return await self._infer_rows(chunk)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0, batch_size_fn=_total_rows)
    async def _infer_batch(self, arrays: list[np.ndarray]) -> list[Outputs]:
        counts = [len(a) for a in arrays]
        rows = sum(counts)
        self._batch_rows[rows] += 1
        padded = bucket_for(rows, self._buckets) if self._runner.static_shapes else rows
        merged = merge_rows(arrays, padded)
        # Serve forms the next batch while this one runs, closing it after
        # batch_wait_timeout_s: a few ms would cut it to the one or two
        # requests that arrived by then, to queue behind this batch anyway.
        # While the model is busy, wait as long as a batch takes instead, so
        # the next one fills with what arrives meanwhile (like Triton's and TF
        # Serving's batchers, which form a batch when the model is free).
        self._infer_batch.set_batch_wait_timeout_s(
            max(self._settings.batch_wait_timeout_s, self._batch_seconds))
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            outputs = await loop.run_in_executor(self._executor, self._runner.run, merged)
        finally:
            self._infer_batch.set_batch_wait_timeout_s(self._settings.batch_wait_timeout_s)
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (loop.time() - started)
        return split_rows(outputs, counts)
