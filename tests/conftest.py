"""Test tiers, by where a test lives: ``unit`` (tests/unit, tests/app: pure
code and the HTTP layer in process, no Ray), ``cluster`` (tests/integration:
a real Ray cluster and Serve), ``browser`` (the demo page in Chromium, on the
cluster). ``make test-unit``, ``make test-cluster``, ``make test-browser``
run one; ``make test`` runs them all.

``make test`` runs them in two pytest-xdist workers (``-n 2 --dist loadgroup
--no-loadscope-reorder``): tests/integration is one group, run by one worker
on one session cluster in file order, handed out first; the in-process tests
run meanwhile in the other worker. (Two clusters at once, one per worker,
saturate two cores: slower, and timing-sensitive tests fail.)"""

import os

import pytest

# Every process of the test session (this driver, `serve run`, the example
# client) runs with Ray's token authentication off; see docs/operations.md.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        integration = item.path.parent.name == "integration"
        item.add_marker("cluster" if integration else "unit")
        if item.path.name == "test_ui.py":
            item.add_marker("browser")
        if integration:
            item.add_marker(pytest.mark.xdist_group("cluster"))
    # The cluster's group first (xdist hands out work in this order); stable.
    items.sort(key=lambda item: item.path.parent.name != "integration")
