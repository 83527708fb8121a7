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
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve

from deployments.config import DeviceArgs, InputLimits, ModelArgs
from deployments.errors import BadRequest, ServeError
from deployments.metrics import PipelineMetrics
from deployments.model_files import moved_to, source
from deployments.objects import read_objects
from deployments.pipeline_plan import Step
from deployments.replica.device import apply_device_plan, plan_device
from deployments.replica.lifecycle import VersionManager
from deployments.replica.pipeline_step import StepLog, run_step
from deployments.replica.served import BatchSettings, ServedVersion, answer_each
from deployments.shipping import ShippedModel, receive
from deployments.signature import ModelMetadata, by_name, check_inputs
from deployments.types import Inputs, Outputs
from deployments.user_code import Watchdog, load_transforms
from deployments.versions import VersionStatus

logger = logging.getLogger("ray.serve")


def _initial_settings() -> BatchSettings:
    """The ``user_config`` this replica starts with, so the constructor warms up
    the right buckets (Serve calls ``reconfigure`` with it only afterwards).
    Serve's own ``serve.batch`` reads the deployment config the same way."""
    config = getattr(serve.get_replica_context(), "_deployment_config", None)
    return BatchSettings.model_validate(getattr(config, "user_config", None) or {})


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
class ModelDeployment:
    """Every configured version of one model; the app names it after the model."""

    def __init__(self, model: ModelArgs, device: DeviceArgs,
                 shipped: ShippedModel | None = None, transforms: tuple[str, ...] = (),
                 limits: InputLimits | None = None) -> None:
        """``transforms``: the pipeline steps' code this model's replicas run,
        imported now so that a path that does not import fails the deploy;
        ``limits``: the app's, which the inputs those steps build are held to."""
        self._transforms = load_transforms(model.name, transforms)
        self._limits = limits or InputLimits()
        self._watchdog = Watchdog(self._transforms.values(), self._limits.request_timeout_s)
        self._steps = StepLog(PipelineMetrics())
        context = ray.get_runtime_context()
        resources = context.get_assigned_resources()
        plan = plan_device(
            num_cpus=resources.get("CPU", 1.0),
            gpu_ids=context.get_accelerator_ids().get("GPU", []),
            gpu_fraction=resources.get("GPU", 0.0),
            gpu_memory=device.gpu_memory,
            gpu_total_memory_mb=device.gpu_total_memory_mb,
        )
        self._plan = plan
        # TF releases the GIL while it computes; running it on a thread keeps
        # the replica's event loop free to form the next batch meanwhile.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tf")
        self._settings = _initial_settings()
        self._shipped = shipped.digest if shipped is not None else None
        if shipped is not None:  # load this node's copy, not the source
            model = moved_to(model, receive(shipped))

        def load(version: int, path: Path) -> ServedVersion:
            # Imported after the device plan (``prepare`` below): the preprocessor
            # and the `serve run` driver import this module too and need no TensorFlow.
            from deployments.replica.runner import SavedModelRunner

            runner = SavedModelRunner(model, version, path, plan.device)
            served = ServedVersion(runner, self._executor, self._settings, plan.cpu_threads)
            if model.warmup:
                self._executor.submit(served.replay_warmup).result()
            self._executor.submit(self._prepare, served, self._settings).result()
            served.apply(self._settings)
            logger.info("model %r version %d loaded from %s on %s",
                        model.name, version, path, plan.device)
            return served

        # TensorFlow is imported and set up once there is a version to load: a
        # path with no model fails the replica without the import's ~3 s of CPU.
        self._versions = VersionManager(model.name, source(model), model.version_policy, load,
                                        model.poll_interval_s,
                                        prepare=partial(apply_device_plan, plan))
        self._versions.start()

    async def reconfigure(self, user_config: dict) -> None:
        """Retune batching live; new bucket sizes are warmed up before use.

        Serve also calls this right after the constructor, before the replica
        takes traffic, so the first real request finds every batch shape
        traced and its kernels set up.
        """
        self._versions.watch()
        settings = BatchSettings.model_validate(user_config)
        loop = asyncio.get_running_loop()
        async with self._versions.changing:  # no version loads meanwhile on old settings
            for served in list(self._versions.served.values()):
                await loop.run_in_executor(self._executor, self._prepare, served, settings)
                served.apply(settings)
            self._settings = settings
        logger.info("batching: %s", settings)

    async def check_health(self) -> None:
        """Serve asks every few seconds: a replica that takes no calls still
        follows its base path. Fails once every thread of a pipeline
        transform is held by a call that hung, so Serve replaces the replica
        (``deployments.user_code.Watchdog``)."""
        self._versions.watch()
        self._watchdog.check()

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

    async def metadata(self) -> dict[int, ModelMetadata]:
        """Every available version's signature and current batch limit, by
        version. (Async: it starts the version watcher on the event loop,
        since the ingress asks every second.)"""
        self._versions.watch()
        return {v: served.runner.metadata.with_batch_size(served.max_batch_size)
                for v, served in self._versions.served.items()}

    def statuses(self) -> list[VersionStatus]:
        """Every version's state (loading, available, unloading, ended), highest first."""
        return self._versions.statuses()

    def stats(self, version: int | None = None) -> dict[str, Any]:
        """What this replica runs on and the batches it formed (rows → count)."""
        served = self._versions.served[version or self._versions.latest()]
        return {
            "pid": os.getpid(),
            "device": self._plan.device,
            "intra_op_threads": self._plan.intra_op_threads,
            "max_batch_size": served.max_batch_size,
            "auto_batch_size": served.sizing and served.sizing.describe(),
            "shipped": self._shipped,
            "batch_wait_timeout_s": self._settings.batch_wait_timeout_s,
            "versions": sorted(self._versions.served),
            "path": str(served.runner.path),
            "warmup": served.warmup,
            "signatures": served.runner.metadata.signature_names,
            "buckets": served.buckets,
            "traces": served.runner.traces,
            "batch_rows": dict(sorted(served.batch_rows.items())),
            "pipeline_steps": self._steps.as_dict(),
        }

    async def __call__(self, inputs: np.ndarray | dict[str, np.ndarray],
                       version: int | None = None, signature: str | None = None) -> Outputs:
        """Run a batch of any size on a version (default: the highest) and
        signature (default: the configured one): every input by name (or the
        one input's array); returns every output by name."""
        async with self._versions.using(version) as served:
            meta = served.signature(signature)
            return await served.infer(check_inputs(by_name(inputs, meta), meta),
                                      meta.named_signature)

    async def infer_parts(self, local: list[Inputs] | None,
                          forwarded: list[dict[str, ray.ObjectRef]],
                          version: int | None = None,
                          isolated: bool = False,
                          signature: str | None = None) -> list[Outputs | ServeError]:
        """The ingress's coalesced call: several requests' inputs, each answered
        on its own (its outputs, or the error that applies to it alone).

        ``local`` arrives resolved (one object, put once by the ingress: each
        array a read-only view of it); ``forwarded`` are callers' own objects,
        input by input, passed on unresolved by the ingress and read here in
        place. Each part joins the version's batch queue by itself, so the
        parts of one call share batches with each other and with other
        callers' requests; ``isolated`` parts (re-sent after a crash) run in
        TensorFlow calls of their own instead. ``signature``: which one of
        the version's signatures (default: the configured one). Every part
        was checked against it by the data plane that sent it
        (``DataPlane._part``), callers' own objects included.
        """
        async with self._versions.using(version) as served:
            run = served.run_alone if isolated else served.infer
            return await answer_each(await _parts(local, forwarded), served.signature(signature),
                                     partial(run, signature=signature), checked=True)

    async def infer_step(self, step: Step, isolated: bool, request: list[Inputs] | None,
                         forwarded: list[dict[str, ray.ObjectRef]],
                         *upstream: list[Outputs | ServeError]) -> list[Outputs | ServeError]:
        """A pipeline's step for each request of its call, on the version it
        names or the highest (``deployments.replica.pipeline_step.run_step``).
        Serve sends it once the ``upstream`` steps have answered; Ray hands
        their answers and the request's arrays over as read-only views of the
        object store."""
        parts = await _parts(request, forwarded)
        async with self._versions.using(step.version) as served:
            return await run_step(step, parts, upstream, served.runner.metadata,
                                  served.run_alone if isolated else served.infer,
                                  self._transforms, self._steps, self._limits)


async def _parts(local: list[Inputs] | None, forwarded: list[dict[str, ray.ObjectRef]]
                 ) -> list[Inputs | ServeError]:
    """A call's requests: the ingress's arrays (resolved by Ray), then the
    callers' own objects, read here."""
    return [*(local or ()), *await asyncio.gather(*(_read(r) for r in forwarded))]


async def _read(refs: dict[str, ray.ObjectRef]) -> Inputs | ServeError:
    """A caller's objects; one that cannot be read fails that caller's part alone."""
    try:
        return await read_objects(refs)
    except BadRequest as exc:
        return exc
