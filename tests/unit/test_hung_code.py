"""A sync callable that hangs holds one of its threads for good: the
watchdog counts the calls running long past the request timeout, exports
them by import path, and fails the replica's health check once every thread
of a callable is held, so Serve replaces the replica."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from deployments.metrics import UserCodeMetrics
from deployments.user_code import STUCK_AFTER, Processor, Watchdog
from tests.app import user_code

CODE = "tests.app.user_code"
DEADLINE_S = 0.05  # a call is stuck once it runs STUCK_AFTER times this
ARRAYS = {"pixels": np.ones((1, 64), np.float32)}


class Recorded(UserCodeMetrics):
    """The watchdog's metric, as set: stuck calls by (stage, import path)."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck: dict[tuple[str, str], int] = {}

    def stuck_calls(self, stage: str, path: str, calls: int) -> None:
        self.stuck[stage, path] = calls


@pytest.fixture
def release() -> Iterator[None]:
    """``hang`` holds its calls until the test ends (or releases them)."""
    user_code.RELEASE.clear()
    yield
    user_code.RELEASE.set()


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_every_thread_of_a_callable_stuck_fails_the_health_check(release: None):
    hung = Processor.load("m", "preprocess", f"{CODE}:hang")
    fine = Processor.load("m", "postprocess", f"{CODE}:with_digit")
    metrics = Recorded()
    watchdog = Watchdog([hung, fine], DEADLINE_S, metrics)

    async def scenario() -> None:
        calls = [asyncio.ensure_future(hung(ARRAYS)) for _ in range(hung.threads - 1)]
        await until(lambda: hung.stuck(DEADLINE_S) == hung.threads - 1)
        watchdog.check()  # one thread left: it still serves
        assert metrics.stuck == {("preprocess", f"{CODE}:hang"): hung.threads - 1,
                                 ("postprocess", f"{CODE}:with_digit"): 0}
        calls.append(asyncio.ensure_future(hung(ARRAYS)))
        await until(lambda: hung.stuck(DEADLINE_S) == hung.threads)
        with pytest.raises(RuntimeError) as failed:
            watchdog.check()
        assert str(failed.value) == (
            f"preprocess {CODE}:hang: all {hung.threads} of its threads have run one call "
            f"for over {STUCK_AFTER * DEADLINE_S:g} s ({STUCK_AFTER} × the request timeout); "
            "restart to free them")
        assert metrics.stuck[("preprocess", f"{CODE}:hang")] == hung.threads
        user_code.RELEASE.set()
        assert [a["pixels"].shape for a in await asyncio.gather(*calls)] == [(1, 64)] * 4
        watchdog.check()
        assert metrics.stuck[("preprocess", f"{CODE}:hang")] == 0

    asyncio.run(scenario())


def test_calls_within_the_deadline_and_async_code_are_not_stuck(release: None):
    hung = Processor.load("m", "transform", f"{CODE}:hang")
    on_the_loop = Processor.load("m", "preprocess", f"{CODE}:to_counts_async")
    watchdog = Watchdog([hung, on_the_loop], 60.0, Recorded())

    async def scenario() -> None:
        calls = [asyncio.ensure_future(hung(ARRAYS)) for _ in range(hung.threads)]
        await until(lambda: hung.running() == hung.threads)
        watchdog.check()  # every thread busy, none for long: slow, not hung
        assert hung.stuck(60.0) == 0
        user_code.RELEASE.set()
        await asyncio.gather(*calls)
        assert hung.running() == 0
        assert on_the_loop.threads == 0  # on the event loop: cancelled at its deadline

    asyncio.run(scenario())


def test_a_call_its_caller_gave_up_on_still_counts_until_it_returns(release: None):
    """The caller's timeout cancels its wait, not the thread."""
    hung = Processor.load("m", "preprocess", f"{CODE}:hang")

    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(DEADLINE_S):
                await hung(ARRAYS)
        await until(lambda: hung.stuck(DEADLINE_S) == 1)
        user_code.RELEASE.set()
        await until(lambda: hung.running() == 0)

    asyncio.run(scenario())
