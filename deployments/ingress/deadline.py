"""A request's deadline, from its arrival to its answer, whatever the
protocol: the configured ``request_timeout_s``, or less when the client asks
(an HTTP header, gRPC metadata). HTTP sets it in a middleware
(``protocols/http.py``), gRPC in its RPC decorator (``protocols/grpc.py``);
the data plane reads it."""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from deployments.config import InputLimits
from deployments.errors import ServiceUnavailable

# Serve's header for a client's own deadline (it applies it too, where it can);
# gRPC clients may send it as metadata.
TIMEOUT_HEADER = "x-request-timeout-seconds"


class DeadlinePassed(ServiceUnavailable):
    """A request not answered within its deadline: a 503 (over gRPC,
    ``DEADLINE_EXCEEDED`` when the deadline was the client's)."""

    def __init__(self, timeout_s: float, clients: bool) -> None:
        super().__init__(f"the request was not answered within {timeout_s:g} s"
                         f"{' (its deadline)' if clients else ''}; retry")
        self.clients = clients


@dataclass(frozen=True)
class _Deadline:
    when: float  # on the event loop's clock
    timeout_s: float
    clients: bool  # the client asked for it (else the config's request_timeout_s)


# The deadline of the HTTP or gRPC request being handled (None: a handle call).
_deadline: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar(
    "deadline", default=None)


def request_timeout(asked: str | None, limits: InputLimits | None) -> tuple[float, bool]:
    """How long a request may take from arrival to answer: the configured
    ``request_timeout_s`` (none without ``limits``), or less when the client
    ``asked`` for less (its :data:`TIMEOUT_HEADER`); and whether that is the
    client's deadline."""
    limit_s = limits.request_timeout_s if limits is not None else math.inf
    try:
        seconds = float(asked) if asked is not None else math.inf
    except ValueError:
        seconds = math.inf
    if 0 < seconds < limit_s:
        return seconds, True
    return limit_s, False


@asynccontextmanager
async def deadline(timeout_s: float, clients: bool = False) -> AsyncIterator[asyncio.Timeout]:
    """A request's deadline, from its arrival to its answer: everything inside
    (reading the body, parsing, waiting for a decode thread, the model) is
    cancelled ``timeout_s`` from now, a :class:`DeadlinePassed`; a request
    past it is not sent to its model. (The ``Timeout`` may be rescheduled:
    an HTTP answer being sent is not cut off.)"""
    when = asyncio.get_running_loop().time() + timeout_s
    token = _deadline.set(_Deadline(when, timeout_s, clients))
    timeout = asyncio.timeout_at(when)
    try:
        async with timeout:
            yield timeout
    except TimeoutError:
        if not timeout.expired():
            raise
        raise DeadlinePassed(timeout_s, clients) from None
    finally:
        _deadline.reset(token)


def within_deadline() -> bool:
    """Whether an HTTP or gRPC request's deadline bounds the code running now
    (else it is a handle call's)."""
    return _deadline.get() is not None


def check_deadline() -> None:
    """A :class:`DeadlinePassed` once the request's deadline has passed (work
    done without yielding to the event loop may overrun it)."""
    current = _deadline.get()
    if current is not None and asyncio.get_running_loop().time() >= current.when:
        raise DeadlinePassed(current.timeout_s, current.clients)
