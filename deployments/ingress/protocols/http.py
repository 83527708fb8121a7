"""What every HTTP route shares: the model its path names, bounded body reads
and the one error renderer."""

from __future__ import annotations

import logging
import math
import zlib
from functools import cache
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.codecs.numbers import decimal_count
from deployments.codecs.tensor import JsonInputs, parse_json
from deployments.config import InputLimits
from deployments.errors import (
    BadRequest,
    PayloadTooLarge,
    ServeError,
    UnsupportedMediaType,
)
from deployments.ingress.budget import JSON_EXPANSION, MemoryBudget, off_loop
from deployments.ingress.deadline import TIMEOUT_HEADER, DeadlinePassed, deadline, request_timeout
from deployments.ingress.request import EncodedImages, RequestInputs, Target
from deployments.ingress.request_id import (
    FORCE_LOG_HEADER,
    REQUEST_ID_HEADER,
    forced,
    request_id,
    request_scope,
)
from deployments.metrics import protocol_of
from deployments.signature import ModelMetadata

logger = logging.getLogger("ray.serve")


def render_error(request: Request, exc: Exception) -> JSONResponse:
    """Every error as ``{"error": message}`` with its status (TF Serving's and
    KServe V2's error body alike).

    Anything not a ServeError or a routing error is a bug of ours: logged with
    its traceback, answered with a 500 that reveals nothing internal.
    """
    if isinstance(exc, HTTPException):  # no such route, or a method it lacks
        return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"},
                            status_code=exc.status_code, headers=exc.headers)
    if not isinstance(exc, ServeError):
        logger.error("unhandled error on %s", request.url.path, exc_info=exc)
        exc = ServeError("internal server error")
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


def target(request: Request, signature: str | None = None) -> Target:
    """The model and version a route's path names (``{name}``, ``{version}``
    or ``{label}``; absent: the default model, its highest version)."""
    params = request.path_params
    return Target(params.get("name"), params.get("version"), params.get("label"), signature)


def deadlines(app: ASGIApp, limits: InputLimits) -> ASGIApp:
    """``app`` with every HTTP request bounded by its deadline (see
    :func:`request_timeout`) from arrival until its answer starts: the body
    read, parsing and decoding included; past it, a 503 (Starlette middleware).
    Each request gets its id here too (``request_id.py``), echoed as
    ``X-Request-Id`` on its answer."""

    async def bounded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        headers = Headers(scope=scope)
        rid = request_id(headers.get(REQUEST_ID_HEADER))
        echo = not _behind_serve()  # (Serve's proxy echoes the id itself)

        async def tagged(message: Message) -> None:
            if echo and message["type"] == "http.response.start":
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, rid)
            await send(message)

        async def answer(message: Message) -> None:
            if message["type"] == "http.response.start":
                timeout.reschedule(None)  # an answer being sent is not cut off
            await tagged(message)

        timeout_s, clients = request_timeout(headers.get(TIMEOUT_HEADER), limits)
        with request_scope(rid, lambda: protocol_of(scope.get("route")),
                           forced(headers.get(FORCE_LOG_HEADER))):
            try:
                async with deadline(timeout_s, clients) as timeout:
                    await app(scope, receive, answer)
            except DeadlinePassed as exc:  # (the timeout's, before any answer started)
                await render_error(Request(scope), exc)(scope, receive, tagged)

    return bounded


@cache
def _behind_serve() -> bool:
    """Whether this runs in a Serve replica, whose HTTP proxy sets and echoes
    ``X-Request-Id`` (in-process tests and other servers: we echo it)."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        serve.get_replica_context()
    except RayServeException:
        return False
    return True


def with_images(meta: ModelMetadata, parsed: JsonInputs) -> RequestInputs:
    """A JSON request's inputs, its encoded images (if any) for the image input."""
    if parsed.images is None:
        return parsed.arrays
    return {**parsed.arrays, meta.image_spec().name: EncodedImages(parsed.images)}


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, max_bytes: int, budget: MemoryBudget) -> bytes:
    """The request body, refused with a 413 as soon as it passes ``max_bytes``
    and held against the ingress's memory budget as it arrives."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit():
        size = decimal_count(declared)  # None: more digits than any count has
        if size is None or size > max_bytes:
            raise PayloadTooLarge(f"request body is {declared[:24]} bytes, the limit is "
                                  f"{max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
        budget.take(len(chunk), "the request body")
        chunks.append(chunk)
    body = _decompress(b"".join(chunks), request.headers.get("content-encoding"), max_bytes)
    if len(chunks) != 1 or body is not chunks[0]:  # joined or inflated: one more copy
        budget.take(len(body), "the request body")
    return body


async def parse_json_body(body: bytes, budget: MemoryBudget) -> Any:
    """A JSON body parsed off the event loop, what the parse holds counted first."""
    budget.take(len(body) * JSON_EXPANSION, "parsing the JSON body")
    return await off_loop(parse_json, body)


# Content-Encoding → zlib's wbits: gzip, or zlib-wrapped deflate (what HTTP
# clients such as tritonclient send as "deflate").
_ENCODINGS = {"gzip": 31, "deflate": 15}


def _decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """A compressed body inflated, refused with a 413 past ``max_bytes`` (so a
    small bomb cannot inflate into gigabytes)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in _ENCODINGS:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or none")
    inflater = zlib.decompressobj(_ENCODINGS[encoding])
    try:
        inflated = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise BadRequest(f"cannot {encoding}-decode the body: {exc}") from None
    if len(inflated) > max_bytes:
        raise PayloadTooLarge(f"decompressed body exceeds the limit of {max_bytes} bytes")
    if not inflater.eof:
        raise BadRequest(f"the {encoding} body is truncated")
    return inflated


class PortableJSON(JSONResponse):
    """Standard JSON, which any client parses: non-finite floats (a model may
    output them; JSON has no literal for them) become ``null``."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except ValueError:  # only when a float is NaN or infinite: rare, so walk then
            return super().render(_finite(content))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
