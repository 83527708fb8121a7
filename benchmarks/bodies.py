"""Request bodies for each protocol, built once per run (the client's own
encoding cost stays out of the measurement)."""

from __future__ import annotations

import base64
import io
import json

import aiohttp
import numpy as np
import tritonclient.http as httpclient
from PIL import Image, ImageDraw

Body = tuple[bytes | aiohttp.FormData, dict[str, str]]


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


def pixels(jpeg: bytes) -> np.ndarray:
    """The JPEG decoded as the model's float32[1, 224, 224, 3] input."""
    rgb = Image.open(io.BytesIO(jpeg)).convert("RGB")
    return (np.asarray(rgb, np.float32) / 255)[None]


def raw_float32(batch: np.ndarray) -> Body:
    """The tensor's bytes as they are (what the hand-built peer takes)."""
    return batch.astype(np.float32).tobytes(), {"Content-Type": "application/octet-stream"}


def native_image(jpeg: bytes) -> Body:
    return jpeg, {"Content-Type": "image/jpeg"}


def native_multipart(blobs: list[bytes]) -> aiohttp.FormData:
    """A fresh form per request: aiohttp consumes a FormData when it sends it."""
    form = aiohttp.FormData()
    for i, blob in enumerate(blobs):
        form.add_field("images", blob, filename=f"{i}.jpg", content_type="image/jpeg")
    return form


def tfserving_b64(jpeg: bytes) -> Body:
    """TF Serving's row format with the image as {"b64": ...}."""
    document = {"instances": [{"b64": base64.b64encode(jpeg).decode()}]}
    return json.dumps(document).encode(), {"Content-Type": "application/json"}


def json_instances(batch: np.ndarray) -> Body:
    """The float tensor as nested JSON lists (~3 MB per 224x224x3 image)."""
    body = json.dumps({"instances": batch.tolist()}).encode()
    return body, {"Content-Type": "application/json"}


def v2(batch: np.ndarray, binary: bool, input_name: str = "image") -> Body:
    """A V2 infer request built by tritonclient, as its HTTP client sends it."""
    inp = httpclient.InferInput(input_name, list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch, binary_data=binary)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([inp], [out])
    headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return body, headers
