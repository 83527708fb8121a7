"""The ingress's memory budget: what it holds for the requests in flight (their
bodies, what parsing JSON makes of them, their decoded batches) stays under
``limits.max_inflight_bytes`` whatever the concurrency. A request that would
pass it gets a 503 at once, before it allocates.

Each request (HTTP, gRPC or a handle call) opens a ledger; what it takes is
given back when it ends, however it ends.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.codecs.errors import ServiceUnavailable

# What parsing a JSON body may hold in Python objects, per byte of the body
# (a number written in two bytes becomes a float object and a list slot).
JSON_EXPANSION = 16

_ledger: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "ledger", default=None)


class MemoryBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @contextmanager
    def request(self) -> Iterator[None]:
        """A request's ledger: everything it takes is given back on exit."""
        ledger = [0]
        token = _ledger.set(ledger)
        try:
            yield
        finally:
            _ledger.reset(token)
            self.used -= ledger[0]

    def take(self, nbytes: int, what: str) -> None:
        """Hold ``nbytes`` for the current request, or a 503 if that would
        pass the budget. Outside a request's ledger nothing is counted."""
        ledger = _ledger.get()
        if ledger is None:
            return
        if self.used + nbytes > self.limit:
            raise ServiceUnavailable(
                f"the ingress holds {self.used} bytes for requests in flight; {what} "
                f"({nbytes} bytes) would pass its budget of {self.limit}: retry shortly")
        self.used += nbytes
        ledger[0] += nbytes

    def asgi(self, app: ASGIApp) -> ASGIApp:
        """``app`` with a ledger around every HTTP request (Starlette middleware)."""

        async def budgeted(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            with self.request():
                await app(scope, receive, send)

        return budgeted
