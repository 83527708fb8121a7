"""A request's deadline on the path into a model, with the fake model client
of ``test_registry``: a request past its deadline is not sent, even when the
work that made it late never yielded to the event loop (so no timer fired)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

import deployments.ingress.dataplane as dataplane_module
from deployments.config import InputLimits
from deployments.errors import ServiceUnavailable
from deployments.ingress.coalescing import CoalesceSettings
from deployments.ingress.deadline import DeadlinePassed, deadline, request_timeout
from tests.unit.test_registry import FakeModel, M, data_plane, rows

LATE = 3.0  # the first value of the request that overruns its deadline


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.001)


def test_a_request_late_before_it_is_sent_is_not_sent(monkeypatch: pytest.MonkeyPatch):
    checked = dataplane_module.check_inputs

    def slow_for_the_late_one(inputs, *args):
        if inputs["x"][0, 0] == LATE:
            time.sleep(0.1)  # past its deadline, without yielding: no timer can fire
        return checked(inputs, *args)

    monkeypatch.setattr(dataplane_module, "check_inputs", slow_for_the_late_one)

    async def scenario() -> None:
        model = FakeModel()
        plane = data_plane(model)
        plane.registry.retune(CoalesceSettings(max_rows=2, max_calls_in_flight=1))
        version = await plane.resolve(M)
        model.gate = asyncio.Event()
        first = asyncio.create_task(plane.infer(version, rows(1)))  # holds the one slot
        await until(lambda: model.calls == [1])
        # Waits for the slot; the late request's row would fill its batch, which goes at once.
        waiting = asyncio.create_task(plane.infer(version, rows(2)))
        with pytest.raises(DeadlinePassed, match=r"not answered within 0\.05 s"):
            async with deadline(0.05):
                await plane.infer(version, rows(LATE))
        model.gate.set()
        await first
        assert (await waiting).outputs["y"][0, 0] == 4.0
        assert model.calls == [1, 1]  # the late request never went with it

    asyncio.run(scenario())


def test_the_deadline_is_the_clients_when_it_asks_for_less():
    limits = InputLimits(request_timeout_s=5)
    assert request_timeout("0.25", limits) == (0.25, True)
    for asked in (None, "10", "5", "0", "-1", "nan", "inf", "soon"):
        assert request_timeout(asked, limits) == (5, False)


def test_a_requests_deadline_bounds_its_model_call_and_a_handles_timeout_its_own():
    async def scenario() -> None:
        model = FakeModel()
        model.gate = asyncio.Event()  # never set
        plane = data_plane(model)
        version = await plane.resolve(M)
        with pytest.raises(DeadlinePassed):  # a request's deadline bounds its model call ...
            async with deadline(0.05):
                await plane.infer(version, rows(1))
        with pytest.raises(ServiceUnavailable, match=r"did not answer within 0\.05 s"):
            await plane.infer(version, rows(1), timeout_s=0.05)  # ... a handle's, its own

    asyncio.run(scenario())
