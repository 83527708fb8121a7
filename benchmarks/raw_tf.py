"""The limit: the benchmark SavedModel called in-process, no serving at all."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm


def measure_raw(model_dir: Path, batch_sizes: list[int], seconds: float,
                label: str = "raw TF") -> dict[int, dict]:
    """Images per second and ms per call of the serving signature, per batch size."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
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
