"""Test tiers, by where a test lives: ``unit`` (tests/unit, tests/app: pure
code and the HTTP layer in process, no Ray), ``cluster`` (tests/integration:
a real Ray cluster and Serve), ``browser`` (the demo page in Chromium, on the
cluster). ``make test-unit``, ``make test-cluster``, ``make test-browser``
run one; ``make test`` runs them all. Cluster tests that start a cluster of
their own (the CLI's, ``make serve``'s, two nodes') are also ``own_cluster``: they need
none of the session's, and ``make test`` runs them beside it."""

import os

import pytest
from hypothesis import HealthCheck, settings

from harness.tools import use_tools

# Every process of the test session (this driver, `serve run`, the example
# client) runs with Ray's token authentication off; see docs/operations.md.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# scikit-learn's digits, for this process only: not the clusters' workers.
use_tools()
# Property tests judge answers, not speed: `make test` runs them on two cores
# beside two Ray clusters, where Hypothesis's timing checks (a 200 ms deadline
# per example, "input generation is slow") failed a passing test.
settings.register_profile("shared_cores", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared_cores")


# Modules whose tests start and stop a cluster of their own.
OWN_CLUSTER = {"test_cli.py", "test_multinode.py", "test_stopping.py"}
# Session-cluster modules `make test` runs in a second session cluster, in the
# process that first ran the ``own_cluster`` modules: two processes of about the
# same length, never more than two clusters at once.
SECOND_CLUSTER = {"test_model_errors.py", "test_models.py", "test_shipping.py",
                  "test_signatures.py", "test_zero_copy.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = "cluster" if item.path.parent.name == "integration" else "unit"
        item.add_marker(tier)
        if item.path.name == "test_ui.py":
            item.add_marker("browser")
        if tier == "cluster" and item.path.name in OWN_CLUSTER:
            item.add_marker("own_cluster")
        if tier == "cluster" and item.path.name in SECOND_CLUSTER:
            item.add_marker("second_cluster")
    # Clusters of their own first: the session's starts when they are done.
    items.sort(key=lambda item: "own_cluster" not in item.keywords)
