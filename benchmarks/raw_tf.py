"""The limit: the benchmark SavedModel called in-process, no serving at all."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm


@functools.cache
def _serving_fn(model_dir: Path) -> Any:
    """The SavedModel's serving signature, loaded once per run: the rounds
    measured in turn call raw TensorFlow again and again."""
    import tensorflow as tf

    return tf.saved_model.load(str(model_dir)).signatures["serving_default"]


def measure_raw(model_dir: Path, batch_sizes: list[int], seconds: float,
                label: str = "raw TF") -> dict[int, dict]:
    """Images per second and ms per call of the serving signature, per batch size."""
    import tensorflow as tf

    fn = _serving_fn(model_dir)
    rng = np.random.default_rng(0)
    results = {}
    for size in tqdm(batch_sizes, desc=label, unit="batch size"):
        batch = tf.constant(rng.random((size, 224, 224, 3), dtype=np.float32))
        fn(image=batch)  # the first call sets up kernels for this shape
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds or calls < 3:
            fn(image=batch)["probabilities"].numpy()
            calls += 1
        results[size] = {"images_per_s": calls * size / elapsed,
                         "ms_per_call": 1000 * elapsed / calls}
    return results


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def measure_raw_beside(model_dir: Path, batch: int, seconds: float, label: str) -> dict:
    """Raw TF at one batch size with the cluster idle beside it: its rate,
    the cores the other processes took meanwhile, and the rate scaled up to
    the whole machine by them (TensorFlow's threads use every core, so its
    rate follows the cores it gets; this takes out what an idle cluster,
    its controller and health checks, would cost raw TensorFlow)."""
    busy, own, start = _busy_cpu_s(), os.times(), time.perf_counter()
    rate = measure_raw(model_dir, [batch], seconds, label)[batch]["images_per_s"]
    elapsed = time.perf_counter() - start
    mine = os.times()
    own_s = (mine.user + mine.system) - (own.user + own.system)
    others = max(0.0, (_busy_cpu_s() - busy - own_s) / elapsed)
    cores = os.cpu_count() or 1
    return {"images_per_s": rate, "others_cores": others,
            "whole_machine_images_per_s": rate * cores / max(cores - others, 0.5)}
