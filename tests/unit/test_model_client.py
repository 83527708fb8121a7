"""How a model call that failed in Ray is answered: sent again when no live
replica took it or its replica was stopped, ``ReplicaDied`` when the replica
died holding it (also when Serve reports an upstream pipeline step's death),
a fast 503 when the queue is full. (No cluster: the failures are Ray's own
exception objects, raised by the call.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError, RayServeException

from deployments.errors import ServiceUnavailable
from deployments.ingress.dispatch import ReplicaDied
from deployments.ingress.model_client import RayModelClient


class _Handle:
    def options(self, **_: object) -> _Handle:
        return self


def died(message: str = "The actor died unexpectedly before finishing this task.",
         upstream: bool = False) -> Exception:
    death = ActorDiedError()
    death.error_msg = message
    if not upstream:
        return death
    wrapped = RayServeException("an upstream actor died before finishing a dependent task")
    wrapped.__cause__ = death
    return wrapped


def calls(*failures: Exception) -> tuple[Callable, list[int]]:
    """A call that raises ``failures`` in turn, then answers."""
    sent: list[int] = []

    async def send() -> str:
        sent.append(1)
        if len(sent) <= len(failures):
            raise failures[len(sent) - 1]
        return "answer"

    return send, sent


def retrying(send: Callable) -> str:
    client = RayModelClient("digits", _Handle())  # type: ignore[arg-type]
    return asyncio.run(client.retrying(send, name="reader"))


@pytest.mark.parametrize("upstream", [False, True])
def test_a_replica_stopped_on_purpose_is_retried(upstream: bool):
    send, sent = calls(died("The actor was killed by `ray.kill`.", upstream))
    assert retrying(send) == "answer" and len(sent) == 2


@pytest.mark.parametrize("upstream", [False, True])
def test_a_replica_that_died_holding_the_call_is_reported(upstream: bool):
    send, sent = calls(died(upstream=upstream))
    with pytest.raises(ReplicaDied):
        retrying(send)
    assert len(sent) == 1


def test_other_serve_errors_are_not_retried():
    send, sent = calls(RayServeException("something else"))
    with pytest.raises(RayServeException, match="something else"):
        retrying(send)
    assert len(sent) == 1


def test_a_full_queue_is_a_fast_503_naming_the_pipeline():
    send, sent = calls(BackPressureError(num_queued_requests=3, max_queued_requests=3))
    with pytest.raises(ServiceUnavailable, match="model 'reader' is overloaded"):
        retrying(send)
    assert len(sent) == 1
