"""The ingress's coalescer: no wait when idle, batches that grow with load,
each caller its own answer or error, cancellation of one member."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from deployments.ingress.coalescing import Coalescer


class FakeModel:
    """Records each call's items; every call waits until the test releases it."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gates: list[asyncio.Event] = []
        self.fail: dict[str, Exception] = {}  # item → its own error
        self.fail_call: Exception | None = None

    async def __call__(self, items: list[str]) -> list[str | BaseException]:
        self.calls.append(items)
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.fail_call is not None:
            raise self.fail_call
        return [self.fail.get(i) or i.upper() for i in items]

    def release(self, call: int) -> None:
        self.gates[call].set()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def run(coro):
    return asyncio.run(coro)


def test_an_idle_path_sends_the_first_request_at_once_and_alone():
    async def scenario():
        model = FakeModel()
        coalescer = Coalescer(model, max_rows=8, max_calls=2, max_hold_s=0)
        task = asyncio.create_task(coalescer.submit("a", 1))
        await settle()
        assert model.calls == [["a"]]  # no waiting for batch-mates
        model.release(0)
        assert await task == "A"

    run(scenario())


def test_arrivals_gather_while_the_slots_are_busy_and_go_together_in_order():
    async def scenario():
        model = FakeModel()
        coalescer = Coalescer(model, max_rows=8, max_calls=1, max_hold_s=0)
        first = asyncio.create_task(coalescer.submit("a", 1))
        await settle()
        rest = [asyncio.create_task(coalescer.submit(x, 1)) for x in "bcd"]
        await settle()
        assert model.calls == [["a"]]  # b, c, d wait for the slot
        model.release(0)
        await settle()
        assert model.calls == [["a"], ["b", "c", "d"]]
        model.release(1)
        assert await first == "A"
        assert [await t for t in rest] == ["B", "C", "D"]
        assert coalescer.stats.as_dict() == {"calls": 2, "requests": 4,
                                             "rows_per_call": {1: 1, 3: 1}}

    run(scenario())


def test_a_full_batch_goes_without_waiting_for_a_slot():
    async def scenario():
        model = FakeModel()
        coalescer = Coalescer(model, max_rows=4, max_calls=1, max_hold_s=0)
        tasks = [asyncio.create_task(coalescer.submit("a", 1))]
        await settle()
        tasks += [asyncio.create_task(coalescer.submit(x, 2)) for x in "bcd"]
        await settle()
        # b and c fill 4 rows: sent at once; d waits for a slot.
        assert model.calls == [["a"], ["b", "c"]]
        model.release(1)
        await settle()
        assert model.calls == [["a"], ["b", "c"]]
        model.release(0)
        await settle()
        assert model.calls == [["a"], ["b", "c"], ["d"]]
        model.release(2)
        assert [await t for t in tasks] == ["A", "B", "C", "D"]

    run(scenario())


def test_without_a_slot_a_partial_batch_waits_and_a_full_one_behind_it_goes():
    async def scenario():
        model = FakeModel()
        coalescer = Coalescer(model, max_rows=4, max_calls=1, max_hold_s=0)
        tasks = [asyncio.create_task(coalescer.submit("a", 1))]
        await settle()
        tasks += [asyncio.create_task(coalescer.submit("b", 1)),
                  asyncio.create_task(coalescer.submit("c", 4))]
        await settle()
        assert model.calls == [["a"], ["c"]]  # c is full alone; b (1 row) waits
        model.release(0)
        await settle()
        assert model.calls == [["a"], ["c"]]  # c's call still holds the one slot
        model.release(1)
        await settle()
        assert model.calls == [["a"], ["c"], ["b"]]
        model.release(2)
        assert [await t for t in tasks] == ["A", "B", "C"]

    run(scenario())


def test_a_call_whose_callers_all_left_is_cancelled_and_frees_its_slot():
    async def scenario():
        model = FakeModel()
        coalescer = Coalescer(model, max_rows=8, max_calls=1, max_hold_s=0)
        gone = asyncio.create_task(coalescer.submit("a", 1))
        await settle()
        waiting = asyncio.create_task(coalescer.submit("b", 1))
        await settle()
        assert model.calls == [["a"]] and coalescer.in_flight == 1
        gone.cancel()  # a's caller left (deadline, disconnect): nobody wants its call
        await settle()
        assert model.calls == [["a"], ["b"]]  # the slot went to b
        model.release(1)
        assert await waiting == "B"

    run(scenario())


def test_one_bad_member_fails_alone():
    async def scenario():
        model = FakeModel()
        model.fail["b"] = ValueError("b is bad")
        coalescer = Coalescer(model, max_rows=8, max_calls=1, max_hold_s=0)
        tasks = [asyncio.create_task(coalescer.submit(x, 1)) for x in "abc"]
        await settle()
        model.release(0)
        await settle()
        model.release(1)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert results[0] == "A" and results[2] == "C"
        assert isinstance(results[1], ValueError) and str(results[1]) == "b is bad"

    run(scenario())


def test_a_failed_call_fails_each_of_its_members_and_the_next_call_still_goes():
    async def scenario():
        model = FakeModel()
        model.fail_call = RuntimeError("replica lost")
        coalescer = Coalescer(model, max_rows=8, max_calls=1, max_hold_s=0)
        tasks = [asyncio.create_task(coalescer.submit(x, 1)) for x in "abc"]
        await settle()
        model.release(0)
        await settle()
        model.fail_call = None
        model.release(1)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], RuntimeError)
        assert results[1:] == ["B", "C"]

    run(scenario())


def test_a_call_answering_the_wrong_number_of_results_fails_every_member():
    async def scenario():
        async def short(items):
            return items[:-1]

        coalescer = Coalescer(short, max_rows=8, max_calls=1, max_hold_s=0)
        results = await asyncio.gather(coalescer.submit("a", 1), return_exceptions=True)
        assert "returned 0 results" in str(results[0])

    run(scenario())


def test_a_cancelled_member_leaves_its_batch_and_the_others_are_answered():
    async def scenario():
        model = FakeModel()
        coalescer = Coalescer(model, max_rows=8, max_calls=1, max_hold_s=0)
        first = asyncio.create_task(coalescer.submit("a", 1))
        await settle()
        waiting = {x: asyncio.create_task(coalescer.submit(x, 1)) for x in "bcd"}
        await settle()
        waiting["c"].cancel()  # gone before its batch was sent
        await settle()
        model.release(0)
        await settle()
        assert model.calls[1] == ["b", "d"]
        first_result = await first
        waiting["b"].cancel()  # gone while its batch runs
        model.release(1)
        assert (first_result, await waiting["d"]) == ("A", "D")
        assert waiting["b"].cancelled() and waiting["c"].cancelled()
        assert coalescer.in_flight == 0

    run(scenario())


@pytest.mark.parametrize("max_calls", [None, 1])
def test_retuning_takes_effect_for_the_next_requests(max_calls):
    async def scenario():
        model = FakeModel()
        coalescer = Coalescer(model, max_rows=8, max_calls=1, max_hold_s=0)
        coalescer.max_calls = max_calls  # None: coalescing off
        tasks = [asyncio.create_task(coalescer.submit(x, 1)) for x in "abc"]
        await settle()
        expected = [["a"], ["b"], ["c"]] if max_calls is None else [["a"]]
        assert model.calls == expected
        for i in range(3):
            if i < len(model.gates):
                model.release(i)
            await settle()
        assert [await t for t in tasks] == ["A", "B", "C"]

    run(scenario())


def test_a_call_runs_in_no_callers_context():
    """Serve cancels the handle calls made in a request's context when that
    request is cancelled: a call shared with others must not be one of them."""
    marker: contextvars.ContextVar[str | None] = contextvars.ContextVar("marker", default=None)
    seen: list[str | None] = []

    async def model(items: list[str]) -> list[str]:
        seen.append(marker.get())
        return items

    async def scenario():
        coalescer = Coalescer(model, max_rows=8, max_calls=1, max_hold_s=0)

        async def caller() -> str:
            marker.set("the caller's request")
            return await coalescer.submit("a", 1)

        assert await asyncio.create_task(caller()) == "a"

    run(scenario())
    assert seen == [None]


def closed_loop(clients: int, requests: int, call_s: float) -> Coalescer:
    """``clients`` callers that each send their next request as soon as the
    last is answered, to a model whose calls take ``call_s``, two in flight
    of up to 8 rows."""
    async def model(items: list[int]) -> list[int]:
        await asyncio.sleep(call_s)
        return items

    async def scenario() -> Coalescer:
        coalescer: Coalescer[int, int] = Coalescer(model, max_rows=8, max_calls=2)

        async def client(k: int) -> None:
            for _ in range(requests):
                assert await coalescer.submit(k, 1) == k

        await asyncio.gather(*(client(k) for k in range(clients)))
        return coalescer

    return run(scenario())


def test_callers_due_back_fill_the_freed_slot_instead_of_the_first_taking_it_alone():
    """16 callers, batches of 8, two calls in flight: with every freed slot
    sent at once, the first caller back went alone and calls of every size
    followed (MobileNetV2 ran 1 to 8 rows); held for the callers due back, the
    calls settle at full batches."""
    rows = closed_loop(clients=16, requests=12, call_s=0.02).stats.rows
    assert rows[8] >= 0.8 * sum(rows.values()), rows


def test_few_callers_are_spread_over_the_slots_not_held_for_one_call():
    """Two callers, two slots: each call carries one of them, so both
    replicas work, instead of one call of two rows."""
    rows = closed_loop(clients=2, requests=10, call_s=0.01).stats.rows
    assert rows == {1: 20}, rows


def test_a_freed_slot_holds_for_the_caller_due_back_then_sends_when_its_wait_ends():
    async def scenario():
        model = FakeModel()
        coalescer = Coalescer(model, max_rows=2, max_calls=1, max_hold_s=1.0)
        a = asyncio.create_task(coalescer.submit("a", 1))
        await settle()
        b = asyncio.create_task(coalescer.submit("b", 1))  # no slot: waits
        await asyncio.sleep(0.5)  # a's call takes 0.5 s: a hold may last 50 ms
        model.release(0)
        assert await a == "A"
        await settle()
        assert model.calls == [["a"]]  # b waits for a's caller, due back
        again = asyncio.create_task(coalescer.submit("a2", 1))
        await settle()
        assert model.calls == [["a"], ["b", "a2"]]  # a full call
        model.release(1)
        assert (await b, await again) == ("B", "A2")
        # Nobody due back comes: after its wait, the lone request goes anyway.
        late = asyncio.create_task(coalescer.submit("c", 1))
        for _ in range(1000):
            if len(model.calls) == 3:
                break
            await asyncio.sleep(0.001)
        assert model.calls[2] == ["c"]
        model.release(2)
        assert await late == "C"

    run(scenario())


def test_one_caller_is_never_held_back():
    """No one else to wait for: its next request goes in the same turn of the
    loop, also once calls have taken long enough for a hold to be worth it."""
    async def scenario():
        model = FakeModel()
        coalescer = Coalescer(model, max_rows=8, max_calls=2)
        for call in range(3):
            task = asyncio.create_task(coalescer.submit("a", 1))
            await settle()
            assert len(model.calls) == call + 1  # sent at once
            await asyncio.sleep(0.02)  # the call's time: a hold would be 2 ms
            model.release(call)
            assert await task == "A"

    run(scenario())
