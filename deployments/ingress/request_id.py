"""A request's id, whatever its protocol: the caller's ``X-Request-Id``
(HTTP header, gRPC metadata) if it is a sane one, else generated; returned
to the caller on every HTTP and gRPC answer (logged or not) and written in
its payload log record. Set beside the deadline: HTTP in a middleware
(``protocols/http.py``), gRPC in its RPC decorator (``protocols/grpc.py``);
the data plane reads it (``payload_log.py``). A Python handle call has none
set: its record gets a generated id, and its answer carries none.

Behind Serve, Serve's HTTP proxy already puts ``X-Request-Id`` on the request
(the caller's, or one it generates) and echoes it on the response: the id is
the same one, and the ingress adds no second header. Over gRPC, Serve's own
``request_id`` metadata (its id, or the caller's ``request_id``) stays as Serve
sends it; ours goes as ``x-request-id`` trailing metadata, equal to Serve's
unless the caller sent an ``x-request-id`` of its own.
"""

from __future__ import annotations

import contextvars
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

REQUEST_ID_HEADER = "x-request-id"
# A header (gRPC: metadata) that has this one request logged, when the model allows it.
FORCE_LOG_HEADER = "x-log-payload"
_SANE = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")  # what we echo and write as given


@dataclass(frozen=True)
class RequestInfo:
    """The request being handled: its id, protocol (read when its record is
    made: an HTTP request's route is matched after the middleware), whether
    its caller asked for its payload to be logged, and when it arrived."""

    request_id: str
    protocol: Callable[[], str]
    force_log: bool
    time: float  # Unix seconds
    started: float  # perf_counter


_current: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar(
    "request_info", default=None)


def new_request_id() -> str:
    return str(uuid.uuid4())


def request_id(given: str | None, fallback: str | None = None) -> str:
    """The caller's id if it is a sane one (≤128 printable characters of an
    id's alphabet), else ``fallback``, else a new one."""
    for candidate in (given, fallback):
        if candidate and _SANE.fullmatch(candidate):
            return candidate
    return new_request_id()


def forced(value: str | None) -> bool:
    """Whether a :data:`FORCE_LOG_HEADER` value asks for the record."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@contextmanager
def request_scope(rid: str, protocol: Callable[[], str] | str,
                  force_log: bool = False) -> Iterator[RequestInfo]:
    """The request's id (and protocol) for the code running inside."""
    info = RequestInfo(rid, protocol if callable(protocol) else (lambda: protocol),
                       force_log, time.time(), time.perf_counter())
    token = _current.set(info)
    try:
        yield info
    finally:
        _current.reset(token)


def current_request() -> RequestInfo | None:
    """The HTTP or gRPC request being handled (``None``: a handle call)."""
    return _current.get()
