"""Predict through the running app from another Ray job, without HTTP.

Start the app (``make serve``), then, on any machine of the cluster::

    RAY_AUTH_MODE=disabled .venv/bin/python examples/handle_client.py models/samples/*.png

It joins the cluster, asks the app for the model's input layout, decodes the
images locally, and predicts three times: passing the numpy batch; passing an
``ObjectRef`` it put in the object store itself (Ray resolves a bare reference
before the app sees it); and passing that reference by input name, which the
app checks and forwards to the model replica as it is (no second copy). The
answers are the same JSON the HTTP route returns, printed as one document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import ray
from ray import serve

from deployments.codecs.image import decode_images
from deployments.config import InputLimits


async def predict(app_name: str, paths: list[Path], top_k: int | None) -> dict:
    # Async calls: they work whether Serve's router runs in its own thread
    # (the default) or in the caller's event loop (RAY_SERVE_THROUGHPUT_OPTIMIZED=1).
    app = serve.get_app_handle(app_name)
    meta = await app.metadata.remote()
    blobs = [path.read_bytes() for path in paths]
    limits = InputLimits()
    batch = decode_images(blobs, meta.image_geometry(), limits.max_image_pixels,
                          limits.max_decoded_bytes, meta.preprocessing)

    ref = ray.put(batch)
    from_array = await app.predict.remote(batch, top_k=top_k)
    from_ref = await app.predict.remote(ref, top_k=top_k)
    forwarded = await app.predict.remote({meta.image_input: ref}, top_k=top_k)
    return {"from_array": from_array, "from_object_ref": from_ref, "forwarded": forwarded}


def main() -> None:
    parser = argparse.ArgumentParser(description="Predict images through a Serve handle.")
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--address", default="auto", help="Ray cluster address")
    parser.add_argument("--app", default="ray-tf-serve", help="Serve application name")
    parser.add_argument("--top-k", type=int, default=None)
    args = parser.parse_args()

    ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
    print(json.dumps(asyncio.run(predict(args.app, args.images, args.top_k))))


if __name__ == "__main__":
    main()
