"""The ingress's memory budget: what it holds for the requests in flight (their
bodies, what parsing JSON makes of them, their decoded batches) stays under
``limits.max_inflight_bytes`` whatever the concurrency. A request that would
pass it gets a 503 at once, before it allocates.

Each request (HTTP, gRPC or a handle call) opens a ledger; what it takes is
given back when it ends, however it ends, but not before the threads it
handed work to (:func:`off_loop`) have finished: a request its deadline or
its client ended leaves a thread parsing or decoding, whose memory still
counts until it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.errors import PayloadTooLarge, ServiceUnavailable

# What parsing a JSON body may hold in Python objects, per byte of the body
# (a number written in two bytes becomes a float object and a list slot).
JSON_EXPANSION = 16

T = TypeVar("T")

# The threads requests hand parsing and encoding to (decoding has its own pool).
_POOL = ThreadPoolExecutor(thread_name_prefix="parse")


class _Ledger:
    """What one request holds, and the threads still working for it."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.held = 0
        self.threads = 0
        self.open = True

    def release(self) -> None:
        """Give back what it holds once the request ended and its threads did."""
        if not self.open and not self.threads:
            self.budget.used -= self.held
            self.held = 0

    def thread_done(self) -> None:
        self.threads -= 1
        self.release()


_ledger: contextvars.ContextVar[_Ledger | None] = contextvars.ContextVar(
    "ledger", default=None)


class MemoryBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @contextmanager
    def request(self) -> Iterator[None]:
        """A request's ledger: everything it takes is given back on exit (or
        once the threads it handed work to end, if later)."""
        ledger = _Ledger(self)
        token = _ledger.set(ledger)
        try:
            yield
        finally:
            _ledger.reset(token)
            ledger.open = False
            ledger.release()

    def take(self, nbytes: int, what: str) -> None:
        """Hold ``nbytes`` for the current request, or a 503 if that would
        pass the budget. Outside a request's ledger nothing is counted."""
        ledger = _ledger.get()
        if ledger is None:
            return
        if nbytes > self.limit:  # it could never fit: retrying will not help
            raise PayloadTooLarge(f"{what} ({nbytes} bytes) is more than this server holds for "
                                  f"all requests at once ({self.limit} bytes)")
        if self.used + nbytes > self.limit:
            raise ServiceUnavailable(
                f"the ingress holds {self.used} bytes for requests in flight; {what} "
                f"({nbytes} bytes) would pass its budget of {self.limit}: retry shortly")
        self.used += nbytes
        ledger.held += nbytes

    def asgi(self, app: ASGIApp) -> ASGIApp:
        """``app`` with a ledger around every HTTP request (Starlette middleware)."""

        async def budgeted(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            with self.request():
                await app(scope, receive, send)

        return budgeted


async def off_loop(fn: Callable[..., T], *args: Any, executor: Executor | None = None) -> T:
    """``fn(*args)`` on a thread (``executor``, else the parsing pool), the
    event loop free meanwhile. Python cannot stop a thread: if the request
    ends first (its deadline, its client gone), what it holds stays counted
    until the thread returns, so a flood of abandoned requests cannot hold
    memory the budget no longer sees."""
    loop = asyncio.get_running_loop()
    ledger = _ledger.get()
    done: Future[T] = (executor or _POOL).submit(contextvars.copy_context().run, fn, *args)
    if ledger is not None:
        ledger.threads += 1

        def finished(_: Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to count
                loop.call_soon_threadsafe(ledger.thread_done)

        done.add_done_callback(finished)
    return await asyncio.wrap_future(done)
