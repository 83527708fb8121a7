"""Coalescing at the ingress: concurrent requests for one model version become
one model call, so Ray's cost per call (a ``ray.put``, a handle call, its
return) is paid once per batch instead of once per request.

An idle path adds no wait: a request that finds a free call slot goes at
once, alone. While every slot is taken, new requests gather; they go together
when a slot frees, or as soon as they hold ``max_rows`` rows, so batches grow
with the load and full batches never wait for a slot. Each caller gets its
own result (or its own error) back, in order.

A free slot holds a partial batch briefly when more requests are due: those
of the callers a call just answered, who (in a closed loop, as clients and
upstream services run) send their next one within a round trip. The
coalescer counts how many requests it held at once in the last second or two
(the callers it serves), and a partial batch waits for as many rows as those
callers not already in a call could bring, spread over the call slots (so
idle replicas run too) and up to ``max_rows``, for at most a tenth of a model
call (``HOLD_SHARE``, never over ``MAX_HOLD_S``). Without it,
the first caller back takes a free slot alone and the rest queue behind it:
MobileNetV2 at 16 clients ran calls of every size from 1 to 8 rows, and a
1-row call costs TensorFlow 1.5x per row what an 8-row one does. One caller
never waits: there is no one else to wait for.

Pure asyncio: the dispatcher hands it the function that makes the call.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

# A partial batch waits at most this share of a model call, and never longer.
HOLD_SHARE = 0.1
MAX_HOLD_S = 0.010
# How long a count of callers is remembered (between one and two windows).
PEAK_WINDOW_S = 1.0

Item = TypeVar("Item")
Result = TypeVar("Result")

# One call: the items in order → one result or one exception per item.
Call = Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]]


class CoalesceSettings(BaseModel):
    """How the ingress merges requests (the Preprocessor's ``user_config``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="false: every request is its own model call")
    max_rows: PositiveInt | None = Field(
        None, description="rows per model call; default: the model's max_batch_size")
    max_calls_in_flight: PositiveInt = Field(
        2, description="model calls in flight per model version past which partial "
                       "batches wait (full ones always go): two per model replica")


@dataclass(eq=False)
class _Member(Generic[Item, Result]):
    item: Item
    rows: int
    future: asyncio.Future[Result]
    arrived: float
    call: asyncio.Task[None] | None = None  # once sent
    batch: list[_Member[Item, Result]] = field(default_factory=list)


@dataclass
class CoalesceStats:
    """What one coalescer formed: rows per call → calls."""

    calls: int = 0
    requests: int = 0
    rows: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {"calls": self.calls, "requests": self.requests,
                "rows_per_call": dict(sorted(self.rows.items()))}


class Coalescer(Generic[Item, Result]):
    """Merges the requests of one model version into calls of ``call``."""

    def __init__(self, call: Call[Item, Result], max_rows: int, max_calls: int | None,
                 max_hold_s: float = MAX_HOLD_S) -> None:
        self._call = call
        self.max_rows = max_rows
        self.max_calls = max_calls  # None: no limit (coalescing off)
        self._max_hold_s = max_hold_s  # 0: a freed slot never holds
        self._pending: list[_Member[Item, Result]] = []
        self._in_flight = 0
        self._rows_in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._callers = _Peak()
        self._call_s = 0.0  # a model call's duration, smoothed
        self._freed = 0.0  # when the last call ended
        self._timer: asyncio.TimerHandle | None = None
        self.stats = CoalesceStats()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def idle(self) -> bool:
        """Nothing waiting and no call in flight."""
        return not self._pending and self._in_flight == 0

    async def submit(self, item: Item, rows: int) -> Result:
        """``item``'s result, from a call it shares with whatever is waiting."""
        loop = asyncio.get_running_loop()
        member: _Member[Item, Result] = _Member(item, rows, loop.create_future(), loop.time())
        self._pending.append(member)
        self._callers.note(sum(m.rows for m in self._pending) + self._rows_in_flight,
                           member.arrived)
        self._dispatch()
        try:
            return await member.future
        except asyncio.CancelledError:
            if member in self._pending:  # not sent yet: it leaves the batch
                self._pending.remove(member)
            elif member.call is not None and all(m.future.done() for m in member.batch):
                member.call.cancel()  # every caller gone: the call frees its slot
            raise

    def _slot_free(self) -> bool:
        return self.max_calls is None or self._in_flight < self.max_calls

    def _dispatch(self) -> None:
        while batch := self._next_batch():
            rows = sum(m.rows for m in batch)
            self._in_flight += 1
            self._rows_in_flight += rows
            self.stats.calls += 1
            self.stats.requests += len(batch)
            self.stats.rows[rows] += 1
            # A call serves several callers, so it runs in a context of its own,
            # not in that of the request whose arrival sent it: Serve cancels
            # the handle calls made in a request's context when that request is
            # cancelled (its client left), which answered its batch-mates 500.
            task = asyncio.create_task(self._run(batch, rows), context=contextvars.Context())
            for member in batch:
                member.call, member.batch = task, batch
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _next_batch(self) -> list[_Member[Item, Result]]:
        """What goes now: the waiting requests from the front up to
        ``max_rows`` when a call slot is free; without one, only a batch that
        is full (from the front, or one request that fills it alone)."""
        count, rows = 0, 0
        if self.max_calls is None:  # coalescing off: each request alone
            count = min(1, len(self._pending))
        else:
            while count < len(self._pending) and (
                    count == 0 or rows + self._pending[count].rows <= self.max_rows):
                rows += self._pending[count].rows
                count += 1
        if rows >= self.max_rows or (self._slot_free() and not self._holds(rows)):
            batch, self._pending = self._pending[:count], self._pending[count:]
            return batch
        big = next((m for m in self._pending if m.rows >= self.max_rows), None)
        if big is None:
            return []
        self._pending.remove(big)
        return [big]

    def _holds(self, rows: int) -> bool:
        """Whether a partial batch of ``rows`` waits for the callers due back
        (the module's docstring); if so, a timer sends it when its wait ends."""
        if self.max_calls is None or not self._pending:
            return False
        loop = asyncio.get_running_loop()
        now = loop.time()
        callers = self._callers.peak(now)
        share = -(-callers // self.max_calls)  # spread over the slots: idle ones run too
        due = min(self.max_rows, share, callers - self._rows_in_flight)
        waiting_since = max(self._pending[0].arrived, self._freed)  # for this slot
        until = waiting_since + min(HOLD_SHARE * self._call_s, self._max_hold_s)
        if rows >= due or now >= until:
            return False
        if self._timer is None:
            self._timer = loop.call_at(until, self._wake)
        return True

    def _wake(self) -> None:
        self._timer = None
        self._dispatch()

    async def _run(self, batch: list[_Member[Item, Result]], rows: int) -> None:
        results: Sequence[Result | BaseException]
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            results = await self._call([m.item for m in batch])
            took = loop.time() - started
            self._call_s = took if not self._call_s else 0.8 * self._call_s + 0.2 * took
            if len(results) != len(batch):
                raise RuntimeError(f"a call of {len(batch)} requests returned "
                                   f"{len(results)} results")
        except Exception as exc:  # every member hears of it
            results = [exc] * len(batch)
        except asyncio.CancelledError:
            for member in batch:
                member.future.cancel()
            raise
        finally:
            self._in_flight -= 1
            self._rows_in_flight -= rows
            self._freed = loop.time()
            self._dispatch()
        for member, result in zip(batch, results, strict=True):
            if member.future.done():  # its caller went away
                continue
            if isinstance(result, BaseException):
                member.future.set_exception(result)
            else:
                member.future.set_result(result)


class _Peak:
    """The most requests held at once lately: over the current window and the
    one before it, so a count fades one to two windows after the load does."""

    def __init__(self) -> None:
        self._start = 0.0
        self._current = 0
        self._previous = 0

    def note(self, count: int, now: float) -> None:
        if now - self._start >= PEAK_WINDOW_S:
            fresh = now - self._start < 2 * PEAK_WINDOW_S
            self._previous = self._current if fresh else 0
            self._current, self._start = 0, now
        self._current = max(self._current, count)

    def peak(self, now: float) -> int:
        self.note(0, now)
        return max(self._current, self._previous)
