"""The preprocessing deployment: the HTTP ingress and the app's Python API.

Every route decodes its body with a pure codec into one float32 batch, which
takes a single data path (:meth:`Preprocessor.predict`): checked against the
model's signature, ``ray.put`` once into the object store, and the
``ObjectRef`` handed to the model deployment.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import ray
from PIL import Image
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from deployments.codecs.errors import (
    BadRequest,
    PayloadTooLarge,
    ServeError,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from deployments.codecs.image import decode_images
from deployments.codecs.predictions import parse_flag, parse_top_k, top_k_predictions
from deployments.codecs.tensor import instances_to_array, parse_json
from deployments.config import InputLimits
from deployments.signature import ModelMetadata, check_batch

logger = logging.getLogger("ray.serve")

# Media types handled as a single encoded image besides image/*.
_OCTET_STREAM = "application/octet-stream"


# The model could not take or finish the request: retrying later may work.
_MODEL_UNAVAILABLE = (RayActorError, ActorUnavailableError, BackPressureError,
                      DeploymentUnavailableError, ReplicaUnavailableError)


def render_error(request: Request, exc: Exception) -> JSONResponse:
    """The one renderer of errors: ``{"error": message}`` with the status.

    Anything not a ServeError is a bug of ours: logged with its traceback,
    answered with a 500 that reveals nothing internal.
    """
    if not isinstance(exc, ServeError):
        logger.error("unhandled error on %s", request.url.path, exc_info=exc)
        exc = ServeError("internal server error")
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with a 413 as soon as it passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body is {declared} bytes, the limit is {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(name="Preprocessor", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Preprocessor:
    def __init__(self, model: DeploymentHandle, top_k: int, limits: InputLimits) -> None:
        # By reference: the model replica gets the ObjectRef and reads the
        # object store's buffer, even where Serve would otherwise send request
        # arguments by value over gRPC (RAY_SERVE_THROUGHPUT_OPTIMIZED=1).
        self._model = model.options(_by_reference=True)
        self._default_top_k = top_k
        self._limits = limits
        self._metadata: ModelMetadata | None = None
        Image.preinit()  # load Pillow's common decoders now, not in the first request
        self._metadata_lock = asyncio.Lock()

    def __serve_build_asgi_app__(self) -> Starlette:
        routes = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/predict", self.predict_http, methods=["POST"]),
        ]
        handlers = {ServeError: render_error, Exception: render_error}
        return Starlette(routes=routes, exception_handlers=handlers)

    async def metadata(self) -> ModelMetadata:
        """The model's signature and labels, asked of a model replica once."""
        if self._metadata is None:
            async with self._metadata_lock:
                if self._metadata is None:
                    self._metadata = await self._fetch_metadata()
        return self._metadata

    async def _fetch_metadata(self) -> ModelMetadata:
        try:
            return await asyncio.wait_for(self._model.metadata.remote(), timeout=10)
        except Exception as exc:
            logger.warning("model metadata unavailable: %r", exc)
            raise ServiceUnavailable("the model is not available") from exc

    async def predict(
        self, inputs: np.ndarray, top_k: int | str | None = None, scores: bool | str = False
    ) -> dict[str, Any]:
        """Predict a batch; the Python handle API and the end of every route.

        ``inputs`` is a batch in the model's input shape (a caller's
        ``ObjectRef`` arrives here already resolved by Ray).
        """
        meta = await self.metadata()
        k = parse_top_k(top_k, self._default_top_k, len(meta.labels))
        include_scores = parse_flag(scores, "scores")
        batch = check_batch(inputs, meta.input, self._limits.max_rows)
        try:
            outputs = await self._model.remote(ray.put(batch))
        except _MODEL_UNAVAILABLE as exc:
            logger.warning("model unavailable: %r", exc)
            raise ServiceUnavailable("no model replica could take the request; retry") from exc
        predictions = top_k_predictions(outputs[meta.scores_output], meta.labels, k,
                                        include_scores)
        return {"model": meta.name, "predictions": predictions}

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def readyz(self, request: Request) -> JSONResponse:
        """Ready while a model replica answers now (not just once)."""
        meta = await self._fetch_metadata()
        return JSONResponse({"status": "ready", "model": meta.name})

    async def predict_http(self, request: Request) -> JSONResponse:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type.startswith("image/") or media_type == _OCTET_STREAM:
            decode = self._decode_image
        elif media_type == "multipart/form-data":
            decode = self._decode_multipart
        elif media_type == "application/json":
            decode = self._decode_json
        else:
            raise UnsupportedMediaType(
                f"unsupported Content-Type {media_type or '(none)'!r}: send image/*, "
                "multipart/form-data with image files, or application/json with \"instances\""
            )
        body = await read_body(request, self._limits.max_body_bytes)
        batch = await decode(request, body)
        params = request.query_params
        return JSONResponse(await self.predict(batch, params.get("top_k"), params.get("scores")))

    # Decoding is CPU work: it runs on a thread, so the event loop keeps
    # answering other requests (and health checks) meanwhile.

    async def _decode_image(self, request: Request, body: bytes) -> np.ndarray:
        return await self._decode_blobs([body])

    async def _decode_json(self, request: Request, body: bytes) -> np.ndarray:
        return await asyncio.to_thread(lambda: instances_to_array(parse_json(body)))

    async def _decode_multipart(self, request: Request, body: bytes) -> np.ndarray:
        """Every file part of a form, in order, as one image batch."""

        async def replay() -> dict[str, Any]:  # the body was already read within limits
            return {"type": "http.request", "body": body, "more_body": False}

        max_rows = self._limits.max_rows
        try:
            form = await Request(request.scope, replay).form(max_files=max_rows + 1)
        except Exception as exc:  # Starlette raises its own error types for bad multipart
            raise BadRequest(f"malformed multipart body: {exc}") from exc
        try:
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if len(files) > max_rows:
                raise PayloadTooLarge(f"more than {max_rows} files in one request")
            blobs = [await f.read() for f in files]
        finally:
            await form.close()
        return await self._decode_blobs(blobs)

    async def _decode_blobs(self, blobs: list[bytes]) -> np.ndarray:
        geometry = (await self.metadata()).image_geometry()
        return await asyncio.to_thread(
            decode_images, blobs, geometry, self._limits.max_image_pixels
        )
