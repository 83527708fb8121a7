"""Zero-copy handoff: an array put in the object store by one process and
read by a replica, against one ``np.copy`` of the same array."""

from __future__ import annotations

import asyncio
import statistics
import time

import numpy as np
import ray
from ray import serve
from tqdm import tqdm

from harness.probes import in_object_store

APP = "handoff"


@serve.deployment(name="Receiver", ray_actor_options={"num_cpus": 0})
class Receiver:
    """Stands in for a model replica: reports what it was handed."""

    def __call__(self, array: np.ndarray) -> dict:
        return {"writeable": bool(array.flags.writeable), "nbytes": int(array.nbytes),
                "in_object_store": in_object_store(array.ctypes.data)}


def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_handoff(sizes_mb: list[int], repeats: int) -> list[dict]:
    """Per size: median ms of ``ray.put`` + the replica call, of ``np.copy``."""
    handle = serve.run(Receiver.bind(), name=APP, route_prefix=None)
    handle = handle.options(_by_reference=True)

    async def hand_over(array: np.ndarray) -> dict:
        return await handle.remote(ray.put(array))

    results = []
    try:
        for size in tqdm(sizes_mb, desc="zero-copy handoff", unit="size"):
            array = np.random.default_rng(0).random(size * 2**20 // 4, dtype=np.float32)
            seen = asyncio.run(hand_over(array))  # also warms the path up
            handoff = _median_s(lambda a=array: asyncio.run(hand_over(a)), repeats)
            copy = _median_s(lambda a=array: np.copy(a), repeats)
            results.append({"mb": size, "handoff_ms": 1000 * handoff, "copy_ms": 1000 * copy,
                            "handoff_vs_copy": handoff / copy, "receiver": seen})
    finally:
        serve.delete(APP)
    return results
