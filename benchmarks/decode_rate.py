"""The ingress's own work with no serving around it: the image codec decoding
the benchmark JPEG into the model's input, on every core at once. What an
ingress tier could reach if serving cost nothing."""

from __future__ import annotations

import multiprocessing
import os
import time

from deployments.codecs.image import decode_images
from deployments.types import ImageGeometry

_GEOMETRY = ImageGeometry(224, 224, 3)


def _decode_for(args: tuple[bytes, float]) -> int:
    jpeg, seconds = args
    done, stop = 0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        decode_images([jpeg], _GEOMETRY, 10**8, 2**30)
        done += 1
    return done


def decode_rate(jpeg: bytes, seconds: float) -> dict:
    """Images decoded per second by one process per core."""
    cores = os.cpu_count() or 1
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pool.map(_decode_for, [(jpeg, 0.5)] * cores)  # warm: imports, Pillow's decoders
        counts = pool.map(_decode_for, [(jpeg, seconds)] * cores)
    return {"processes": cores, "images_per_s": sum(counts) / seconds,
            "ms_per_image_per_core": 1000 * seconds * cores / max(1, sum(counts))}
