"""Sequences of mixed lengths: the text encoder served to 16 clients, each
request one sequence of a length drawn from ``LENGTHS``, against raw
TensorFlow on the same mix, batched by length (what the server does: one
call per length among the requests it merged) and padded to the longest in
the batch (what padding would do), so the cost of padding shows too."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.bodies import Body
from benchmarks.load import run_load

LENGTHS = (32, 64, 128, 256)
APP = "sequence"


def _sequence(rng: np.random.Generator, length: int, vocabulary: int) -> dict[str, np.ndarray]:
    ids = rng.integers(1, vocabulary, (1, length), dtype=np.int32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def mix(count: int, vocabulary: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` one-row requests, lengths drawn uniformly from ``LENGTHS``."""
    rng = np.random.default_rng(seed)
    return [_sequence(rng, int(rng.choice(LENGTHS)), vocabulary) for _ in range(count)]


def pad(requests: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows padded with 0 (ids and mask) to the longest among them."""
    longest = max(r["input_ids"].shape[1] for r in requests)
    return {name: np.concatenate([np.pad(r[name], ((0, 0), (0, longest - r[name].shape[1])))
                                  for r in requests]) for name in requests[0]}


def raw_rates(model_dir: Path, requests: list[dict[str, np.ndarray]], batch: int,
              seconds: float) -> dict[str, float]:
    """Rows per second of the signature called in process on ``requests``:
    one row per call, ``batch`` rows of one length per call, and ``batch``
    rows of the mix padded per call."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    by_length: dict[int, list] = {}
    for r in requests:
        by_length.setdefault(r["input_ids"].shape[1], []).append(r)
    batches = {
        "one at a time": [dict(r) for r in requests],
        f"batches of {batch}, one length each": [
            pad(rows[i:i + batch]) for rows in by_length.values()
            for i in range(0, len(rows) - batch + 1, batch)],
        f"batches of {batch}, mixed, padded": [
            pad(requests[i:i + batch]) for i in range(0, len(requests) - batch + 1, batch)],
    }
    rates = {}
    for name, calls in tqdm(batches.items(), desc="raw TF on the sequence mix", unit="way"):
        tensors = [{k: tf.constant(v) for k, v in c.items()} for c in calls]
        for t in tensors[:len(LENGTHS)]:  # each shape's first call sets up its kernels
            fn(**t)
        rows, started = 0, time.perf_counter()
        for t in itertools.cycle(tensors):
            fn(**t)["logits"].numpy()
            rows += len(t["input_ids"])
            if time.perf_counter() - started > seconds:
                break
        rates[name] = rows / (time.perf_counter() - started)
    return rates


def tfserving_body(request: dict[str, np.ndarray]) -> Body:
    """One row in TF Serving's row format, named inputs."""
    row = {name: array[0].tolist() for name, array in request.items()}
    return json.dumps({"instances": [row]}).encode(), {"Content-Type": "application/json"}


def served_rate(url: str, requests: list[dict[str, np.ndarray]], clients: int,
                seconds: float) -> dict:
    """16 clients (or ``clients``) sending the mix over TF Serving's REST API."""
    bodies = itertools.cycle([tfserving_body(r) for r in requests])
    return run_load(f"{url}/v1/models/{APP}:predict", lambda: next(bodies), 1, clients,
                    seconds, label=f"sequence mix, {clients} clients")
