"""`make bench` (short) or `python -m benchmarks --full`: one run measures raw
TensorFlow on the benchmark model and this server over HTTP on the same
machine, and writes benchmarks/results/<timestamp>.json and .png."""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image, ImageDraw

from benchmarks.load import run_load, single_request_ms
from benchmarks.plot import plot_results
from benchmarks.raw_tf import measure_raw
from benchmarks.server import ROOT, Server, bench_config
from deployments.local import read_env_file
from models.build_benchmark import DEFAULT_OUT, build

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_SIZES = [1, 2, 4, 8, 16, 32]


def sample_jpeg(seed: int = 0) -> bytes:
    """A 224x224 photo-like JPEG (smooth shading and shapes, ~10 KB)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:224, 0:224]
    base = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.uint8)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, 180, 2)
        draw.ellipse([int(x0), int(y0), int(x0) + 40, int(y0) + 40],
                     fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def multipart(blobs: list[bytes]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for i, blob in enumerate(blobs):
        form.add_field("images", blob, filename=f"{i}.jpg", content_type="image/jpeg")
    return form


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "processor": platform.processor()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="longer runs, steadier numbers")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--replicas", type=int, default=2, help="model replicas")
    parser.add_argument("--model-cpus", type=float, default=1, help="num_cpus per replica")
    parser.add_argument("--max-batch-size", type=int, default=4,
                        help="4: where raw MobileNetV2 peaked in most runs on 2 cores; "
                             "0: the smallest batch within 5%% of this run's raw peak")
    parser.add_argument("--batch-wait-ms", type=float, default=0.0,
                        help="batch_wait_timeout_s while the model is idle, in ms")
    parser.add_argument("--server-env", type=Path, default=ROOT / "configs" / "server.env",
                        help="environment file of the cluster's processes")
    args = parser.parse_args()
    seconds = 20.0 if args.full else 8.0

    model_dir = DEFAULT_OUT
    if not (model_dir / "1" / "saved_model.pb").exists():
        print("building the benchmark model (MobileNetV2, weights=None) ...")
        build(model_dir)

    results: dict = {"machine": machine(), "mode": "full" if args.full else "short",
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    raw = measure_raw(model_dir / "1", BATCH_SIZES, seconds=seconds / 2, label="raw TF (before)")
    best = max(raw, key=lambda b: raw[b]["images_per_s"])
    # The curve is flat near its peak on CPUs: take the smallest batch within
    # 5% of it, which serves at the same speed with less waiting.
    near_peak = min(b for b in raw if raw[b]["images_per_s"] >= 0.95 * raw[best]["images_per_s"])
    max_batch_size = args.max_batch_size or near_peak

    overrides = {
        "num_replicas": args.replicas,
        "ray_actor_options": {"num_cpus": args.model_cpus},
        "user_config": {"max_batch_size": max_batch_size,
                        "batch_wait_timeout_s": args.batch_wait_ms / 1000},
    }
    config = bench_config(model_dir, args.port, overrides)
    results["config"] = {"model_deployment": overrides,
                         "server_env": read_env_file(args.server_env)}
    jpeg = sample_jpeg()
    one_image = (jpeg, {"Content-Type": "image/jpeg"})
    with (tempfile.TemporaryDirectory() as tmp,
          Server(config, Path(tmp), args.server_env) as server):
        url = f"{server.url}/predict?top_k=1"
        first = single_request_ms(url, *one_image)
        app: dict = {"first_request_ms": first}
        app["one_client"] = run_load(url, lambda: one_image, 1, 1, seconds, label="1 client")
        app["sixteen_clients"] = run_load(url, lambda: one_image, 1, 16, seconds,
                                          label="16 clients, 1 image")
        app["batch32_requests"] = run_load(  # twice as long: few, big requests
            url, lambda: (multipart([jpeg] * 32), {}), 32, 2, 2 * seconds,
            label="2 clients, 32 images")
        app["model_stats"] = server.model_stats()
    results["app"] = app

    # Raw TF again: the machine's speed drifts, so the limit is the mean of
    # the measurements before and after the app's, and their spread is kept.
    again = measure_raw(model_dir / "1", [1, best], seconds=seconds / 2, label="raw TF (after)")
    batch1 = [raw[1]["ms_per_call"], again[1]["ms_per_call"]]
    limit = [raw[best]["images_per_s"], again[best]["images_per_s"]]
    results["raw_tf"] = {"by_batch": raw, "after": again, "best_batch": best,
                         "best_images_per_s": float(np.mean(limit)),
                         "best_images_per_s_spread": [min(limit), max(limit)],
                         "batch1_ms": float(np.mean(batch1))}

    best_ips = results["raw_tf"]["best_images_per_s"]
    results["ratios"] = {
        "single_image_16_clients_vs_raw_best": app["sixteen_clients"]["images_per_s"] / best_ips,
        "batch32_requests_vs_raw_best": app["batch32_requests"]["images_per_s"] / best_ips,
        "p50_one_client_minus_raw_batch1_ms":
            app["one_client"]["p50_ms"] - results["raw_tf"]["batch1_ms"],
        "first_request_vs_steady_p50": first / app["one_client"]["p50_ms"],
    }

    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / time.strftime("%Y%m%d-%H%M%S")
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    plot_results(results, stem.with_suffix(".png"))
    report(results)
    print(f"wrote {stem}.json and {stem}.png")


def report(results: dict) -> None:
    raw, app, ratios = results["raw_tf"], results["app"], results["ratios"]
    low, high = raw["best_images_per_s_spread"]
    print(f"\nraw TF: batch 1 {raw['batch1_ms']:.1f} ms; best batch {raw['best_batch']}: "
          f"{raw['best_images_per_s']:.1f} img/s (before/after: {low:.1f}-{high:.1f})")
    for key in ("one_client", "sixteen_clients", "batch32_requests"):
        s = app[key]
        print(f"{key:>17}: {s['images_per_s']:7.1f} img/s  p50 {s['p50_ms']:6.1f} ms  "
              f"p99 {s['p99_ms']:6.1f} ms  errors {s['errors'] or 0}")
    print(f"first request {app['first_request_ms']:.1f} ms; "
          f"batches formed (rows: count) {app['model_stats']['batch_rows']}")
    for name, value in ratios.items():
        print(f"  {name}: {value:.2f}")


if __name__ == "__main__":
    main()
