"""The ingress's memory budget: held per request, given back however the
request ends, a 503 before a request would pass it."""

import asyncio
import threading

import pytest

from deployments.errors import PayloadTooLarge, ServiceUnavailable
from deployments.ingress.budget import MemoryBudget, off_loop


def test_what_a_request_takes_is_given_back_when_it_ends():
    budget = MemoryBudget(100)
    with budget.request():
        budget.take(60, "a body")
        with pytest.raises(ServiceUnavailable, match=r"a batch \(50 bytes\) would pass its "
                                                     r"budget of 100"):
            budget.take(50, "a batch")
        assert budget.used == 60
    assert budget.used == 0


def test_what_could_never_fit_is_a_413_not_a_retry():
    budget = MemoryBudget(100)
    with budget.request():
        with pytest.raises(PayloadTooLarge, match=r"examples \(101 bytes\) is more than this "
                                                  r"server holds for all requests at once"):
            budget.take(101, "examples")
        assert budget.used == 0


def test_a_failed_request_gives_back_too_and_others_count_together():
    budget = MemoryBudget(100)
    with budget.request():
        budget.take(40, "a body")
        with pytest.raises(RuntimeError), budget.request():
            budget.take(40, "another body")
            assert budget.used == 80
            raise RuntimeError("the request failed")
        assert budget.used == 40
    assert budget.used == 0


def test_nothing_is_counted_outside_a_request():
    budget = MemoryBudget(10)
    budget.take(1000, "something")
    assert budget.used == 0


def test_a_request_that_ends_before_its_thread_holds_its_memory_until_the_thread_does():
    """A deadline or a client gone ends the request, not the thread parsing
    for it: what the request took stays counted until the thread returns."""
    budget = MemoryBudget(100)
    release = threading.Event()

    def parse() -> str:
        release.wait(10)
        return "parsed"

    async def request() -> None:
        with budget.request():
            budget.take(70, "a body")
            await off_loop(parse)

    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await request()
        assert budget.used == 70  # the thread still parses
        release.set()
        for _ in range(200):  # the thread's end is counted on the event loop
            if budget.used == 0:
                break
            await asyncio.sleep(0.01)
        assert budget.used == 0
        with budget.request():  # and a request that waits for its thread is unchanged
            assert await off_loop(parse) == "parsed"
        assert budget.used == 0

    asyncio.run(scenario())
