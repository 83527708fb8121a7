"""The ingress's memory budget: held per request, given back however the
request ends, a 503 before a request would pass it."""

import pytest

from deployments.budget import MemoryBudget
from deployments.codecs.errors import ServiceUnavailable


def test_what_a_request_takes_is_given_back_when_it_ends():
    budget = MemoryBudget(100)
    with budget.request():
        budget.take(60, "a body")
        with pytest.raises(ServiceUnavailable, match=r"a batch \(50 bytes\) would pass its "
                                                     r"budget of 100"):
            budget.take(50, "a batch")
        assert budget.used == 60
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
