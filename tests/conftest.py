"""Test tiers, by where a test lives: ``unit`` (tests/unit, tests/app: pure
code and the HTTP layer in process, no Ray), ``cluster`` (tests/integration:
a real Ray cluster and Serve), ``browser`` (the demo page in Chromium, on the
cluster). ``make test-unit``, ``make test-cluster``, ``make test-browser``
run one; ``make test`` runs them all. Cluster tests that start a cluster of
their own (the CLI's, ``make serve``'s, two nodes') are also ``own_cluster``: they need
none of the session's, and ``make test`` runs them beside it."""

import os

import pytest

from harness.tools import use_tools

# Every process of the test session (this driver, `serve run`, the example
# client) runs with Ray's token authentication off; see docs/operations.md.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# scikit-learn's digits, for this process only: not the clusters' workers.
use_tools()


# Modules whose tests start and stop a cluster of their own.
OWN_CLUSTER = {"test_cli.py", "test_multinode.py", "test_stopping.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = "cluster" if item.path.parent.name == "integration" else "unit"
        item.add_marker(tier)
        if item.path.name == "test_ui.py":
            item.add_marker("browser")
        if item.path.name in OWN_CLUSTER:
            item.add_marker("own_cluster")
