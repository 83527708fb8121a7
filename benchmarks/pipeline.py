"""The example pipeline (examples/digit_reader: locator → crop → digits)
served over HTTP, one canvas a request, against its stages called one after
the other in this process; and where its time goes: per stage in process,
per step on the replicas (their own accounting: feed time, which is
gathering the inputs and the crop, and model time per call, requests per
call, rows per TensorFlow call), and outside the steps (one client's latency
beside the time in the replicas and each stage's model served alone)."""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter

import numpy as np
from tqdm import tqdm

from benchmarks import bodies
from benchmarks.load import run_load
from benchmarks.server import Server
from harness.cluster import replica_stats, running_replicas
from harness.reader import locator_model, reader_app, reader_stages

APP = "reader"
PIPELINE = "digit_reader"
STEPS = {"locate": "locator", "read": "digits"}  # each step's model
JSON, BINARY = "TF Serving JSON", "V2 binary"


def canvases(count: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``count`` canvases ``[N, 40, 40, 1]`` with a digit each and their
    true boxes (models/build_locator.py; the locator is built if missing)."""
    locator_model()
    from models.build_locator import canvases as draw

    images, boxes, _ = draw(count, seed)
    return images[..., None], boxes


def in_process(images: np.ndarray, batches: list[int], seconds: float) -> dict[str, dict]:
    """The stages one after the other in this process, by batch size:
    canvases per second and each stage's milliseconds per batch."""
    from examples.digit_reader.crop import crop_digits

    locate, read = reader_stages()
    rates = {}
    for batch in tqdm(batches, desc="pipeline stages in process", unit="batch size"):
        chunk = images[:batch]
        read.run(crop_digits({"image": chunk, "box": locate.run({"image": chunk})["box"]}))
        spent, calls = np.zeros(3), 0
        while spent.sum() < seconds or calls < 3:
            t0 = time.perf_counter()
            box = locate.run({"image": chunk})["box"]
            t1 = time.perf_counter()
            crops = crop_digits({"image": chunk, "box": box})
            t2 = time.perf_counter()
            read.run(crops)
            spent += (t1 - t0, t2 - t1, time.perf_counter() - t2)
            calls += 1
        rates[str(batch)] = {
            "canvases_per_s": calls * batch / float(spent.sum()),
            "ms_per_batch": dict(zip(("locate", "crop", "read"), (1000 * spent / calls).tolist(),
                                     strict=True))}
    return rates


def _columnar(inputs: dict[str, np.ndarray]) -> bodies.Body:
    """TF Serving's columnar format: ``{"inputs": {name: values}}``."""
    return (json.dumps({"inputs": {n: a.tolist() for n, a in inputs.items()}}).encode(),
            {"Content-Type": "application/json"})


def _counters() -> dict[str, tuple[Counter, Counter]]:
    """Each step's counters and its model's rows per TensorFlow call (rows →
    calls), summed over the model's replicas."""
    running = running_replicas(APP)
    out = {}
    for step, model in STEPS.items():
        steps, rows = Counter(), Counter()
        for stats in replica_stats(APP, model, running[model]).values():
            steps.update(stats["pipeline_steps"].get(f"{PIPELINE}/{step}", {}))
            rows.update(stats["batch_rows"])
        out[step] = steps, rows
    return out


def _per_call(before: dict, after: dict) -> dict[str, dict]:
    """What a load added to each step's counters, per call."""
    out = {}
    for step in STEPS:
        (steps, rows), (steps_then, rows_then) = after[step], before[step]
        steps.subtract(steps_then)
        rows.subtract(rows_then)
        calls = max(steps["calls"], 1)
        out[step] = {"calls": steps["calls"], "requests_per_call": steps["requests"] / calls,
                     "feed_ms_per_call": 1000 * steps["feed_s"] / calls,
                     "model_ms_per_call": 1000 * steps["model_s"] / calls,
                     "batch_rows": dict(sorted((int(k), n) for k, n in rows.items() if n))}
    return out


def served(server: Server, main_config: dict, images: np.ndarray, boxes: np.ndarray,
           levels: list[int], seconds: float) -> dict:
    """The example's app beside the main one: the pipeline over TF Serving
    JSON at each client count and V2 binary at the highest, each with what
    its steps counted; then each stage's model alone, one client."""
    from examples.digit_reader.crop import crop_digits

    app = reader_app()
    app.update(name=APP, route_prefix=f"/{APP}")
    server.deploy({**main_config, "applications": [*main_config["applications"], app]}, APP)
    base = f"{server.url}/{APP}"
    rows = range(len(images))
    paths = {JSON: (f"{base}/v1/models/{PIPELINE}:predict",
                    [_columnar({"image": images[i:i + 1]}) for i in rows], levels),
             BINARY: (f"{base}/v2/models/{PIPELINE}/infer",
                      [bodies.v2(images[i:i + 1], binary=True) for i in rows], levels[-1:])}
    runs: dict[str, dict] = {}
    for protocol, (url, made, clients_levels) in paths.items():
        for clients in clients_levels:
            before, cycle = _counters(), itertools.cycle(made)
            summary = run_load(url, lambda c=cycle: next(c), 1, clients, seconds,
                               label=f"pipeline, {protocol}, {clients} clients")
            runs.setdefault(protocol, {})[str(clients)] = {
                **summary, "steps": _per_call(before, _counters())}
    crops = crop_digits({"image": images, "box": boxes})["image"]
    alone = {model: run_load(f"{base}/v1/models/{model}:predict", lambda b=body: b, 1, 1,
                             seconds / 2, label=f"{model} alone, 1 client")
             for model, body in (("locator", _columnar({"image": images[:1]})),
                                 ("digits", _columnar({"image": crops[:1]})))}
    server.deploy(main_config)  # the example's app leaves
    return {"served": runs, "stages_alone_1_client": alone}
