"""Where and how TensorFlow runs in a model replica, derived from the resources
Ray assigned to it.

:func:`plan_device` is pure, so the GPU logic is tested on machines without a
GPU; :func:`apply_device_plan` hands the plan to TensorFlow and must run before
TensorFlow creates its runtime (i.e. before the model is loaded).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from deployments.config import GpuMemoryMode

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class DevicePlan:
    device: str  # "/GPU:0" or "/CPU:0"
    intra_op_threads: int
    inter_op_threads: int
    memory_growth: bool = False
    memory_limit_mb: int | None = None

    @property
    def cpu_threads(self) -> int | None:
        """TensorFlow's threads when it computes on the CPU (None on a GPU)."""
        return None if self.device.startswith("/GPU") else self.intra_op_threads


def plan_device(
    num_cpus: float,
    gpu_ids: list[str],
    gpu_fraction: float,
    gpu_memory: GpuMemoryMode = "growth",
    gpu_total_memory_mb: int | None = None,
) -> DevicePlan:
    """Decide TF's device, thread pools and GPU memory policy for one replica.

    ``num_cpus`` and ``gpu_fraction`` are the replica's ``ray_actor_options``;
    ``gpu_ids`` the GPUs Ray assigned (it sets ``CUDA_VISIBLE_DEVICES`` to them,
    so TensorFlow sees the first as ``/GPU:0``). TensorFlow ignores
    ``OMP_NUM_THREADS``, so its own thread pools are sized from ``num_cpus``,
    letting replicas that share a machine stay off each other's cores.

    TensorFlow reserves all GPU memory by default, which breaks fractional
    GPUs. ``growth`` allocates on demand; ``limit`` caps the replica at its
    share, ``gpu_fraction × gpu_total_memory_mb`` (the stricter choice when
    several replicas must fit for sure).
    """
    threads = max(1, math.floor(num_cpus)) if num_cpus > 0 else 1
    inter = 2 if threads >= 2 else 1
    if not gpu_ids:
        return DevicePlan("/CPU:0", threads, inter)
    if gpu_memory == "growth":
        return DevicePlan("/GPU:0", threads, inter, memory_growth=True)
    if gpu_total_memory_mb is None:
        raise ValueError('gpu_memory "limit" needs gpu_total_memory_mb in the config')
    share = min(gpu_fraction, 1.0) if gpu_fraction > 0 else 1.0
    return DevicePlan("/GPU:0", threads, inter, memory_limit_mb=int(share * gpu_total_memory_mb))


def apply_device_plan(plan: DevicePlan) -> None:
    """Configure TensorFlow's runtime; call once, before any TF op runs."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(plan.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(plan.inter_op_threads)
    gpus = tf.config.list_physical_devices("GPU")
    if plan.device.startswith("/GPU"):
        if not gpus:
            raise RuntimeError("Ray assigned a GPU, but TensorFlow sees none (CUDA build?)")
        gpu = gpus[0]
        if plan.memory_limit_mb is not None:
            tf.config.set_logical_device_configuration(
                gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=plan.memory_limit_mb)]
            )
        else:
            tf.config.experimental.set_memory_growth(gpu, plan.memory_growth)
    elif gpus:
        # No GPU assigned to this replica: keep TF off any GPU it can see.
        tf.config.set_visible_devices([], "GPU")
    logger.info("TensorFlow device plan: %s", plan)
