"""Coalescing at the ingress: concurrent requests for one model version become
one model call, so Ray's cost per call (a ``ray.put``, a handle call, its
return) is paid once per batch instead of once per request.

An idle path adds no wait: a request that finds a free call slot goes at
once, alone. While every slot is taken, new requests gather; they go together
when a slot frees, or as soon as they hold ``max_rows`` rows, so batches grow
with the load and full batches never wait for a slot. Each caller gets its
own result (or its own error) back, in order.

Pure asyncio: the dispatcher hands it the function that makes the call.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

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
                       "batches wait (full ones always go)")


@dataclass(eq=False)
class _Member(Generic[Item, Result]):
    item: Item
    rows: int
    future: asyncio.Future[Result]
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

    def __init__(self, call: Call[Item, Result], max_rows: int, max_calls: int | None) -> None:
        self._call = call
        self.max_rows = max_rows
        self.max_calls = max_calls  # None: no limit (coalescing off)
        self._pending: list[_Member[Item, Result]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
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
        member: _Member[Item, Result] = _Member(
            item, rows, asyncio.get_running_loop().create_future())
        self._pending.append(member)
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
            self.stats.calls += 1
            self.stats.requests += len(batch)
            self.stats.rows[rows] += 1
            task = asyncio.create_task(self._run(batch))
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
        if self._slot_free() or rows >= self.max_rows:
            batch, self._pending = self._pending[:count], self._pending[count:]
            return batch
        big = next((m for m in self._pending if m.rows >= self.max_rows), None)
        if big is None:
            return []
        self._pending.remove(big)
        return [big]

    async def _run(self, batch: list[_Member[Item, Result]]) -> None:
        results: Sequence[Result | BaseException]
        try:
            results = await self._call([m.item for m in batch])
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
            self._dispatch()
        for member, result in zip(batch, results, strict=True):
            if member.future.done():  # its caller went away
                continue
            if isinstance(result, BaseException):
                member.future.set_exception(result)
            else:
                member.future.set_result(result)
