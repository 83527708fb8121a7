"""A model replica killed under steady load: Serve replaces it, requests in
flight are sent again to a live replica, nothing hangs and nothing is lost."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from harness import cluster
from harness.cluster import running_replicas, wait_app_running, wait_until
from tests.common import SAMPLES
from tests.integration.conftest import deploy_config, with_test_app

APP = "faults"


def deploy_faults_app(tmp_path: Path, top_k: int = 3, model_cpus: float = 1) -> None:
    """An app with two fixed replicas of the digits model."""
    config = with_test_app(APP, args={"top_k": top_k}, deployment={
        "num_replicas": 2, "ray_actor_options": {"num_cpus": model_cpus}})
    deploy_config(config, tmp_path)


@pytest.fixture(scope="module")
def faults_url(base_url: str, tmp_path_factory) -> Iterator[str]:
    deploy_faults_app(tmp_path_factory.mktemp("faults"))
    wait_app_running(APP, 180)
    yield f"{base_url}/{APP}"
    serve.delete(APP, _blocking=False)  # (goes while the next module starts)


class SteadyLoad:
    """Clients posting ``images`` images at a time in a loop until stopped;
    statuses counted. (Big batches keep both replicas busy, so faults land on
    requests in flight.)"""

    def __init__(self, url: str, clients: int, images: int = 120) -> None:
        files = [("f", (p.name, p.read_bytes(), "image/png")) for p in SAMPLES] * 12
        self._files = files[:images]
        self._url, self._clients = url, clients
        self.statuses: Counter[int | str] = Counter()
        self.top_k: set[int] = set()
        self.slowest_s = 0.0
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(clients)

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    r = client.post(f"{self._url}/predict", files=self._files)
                    self.statuses[r.status_code] += 1
                    if r.status_code == 200:
                        self.top_k.add(len(r.json()["predictions"][0]["top_k"]))
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1
                self.slowest_s = max(self.slowest_s, time.perf_counter() - started)

    def answers(self, more: int) -> None:
        """Wait until ``more`` further requests have been answered."""
        target = sum(self.statuses.values()) + more
        wait_until(lambda: sum(self.statuses.values()) >= target, 120, f"{more} more answers")

    def __enter__(self) -> SteadyLoad:
        self._futures = [self._pool.submit(self._run) for _ in range(self._clients)]
        self.answers(self._clients)  # the load is running
        return self

    def __exit__(self, *exc: object) -> None:
        self.answers(self._clients)  # and it ran on after whatever happened inside
        self._stop.set()
        for f in self._futures:
            f.result()
        self._pool.shutdown()


def replica_actor_names() -> list[str]:
    return cluster.replica_actor_names(APP, "digits")


def test_a_killed_replica_loses_no_request(faults_url: str):
    assert len(replica_actor_names()) == 2
    with SteadyLoad(faults_url, clients=6) as load:
        victim = replica_actor_names()[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at = time.monotonic()
        wait_until(lambda: running_replicas(APP).get("digits") == 2
                   and victim not in replica_actor_names(), 120, "a replacement replica")
        recovered_s = time.monotonic() - killed_at
        # On a busy machine the replacement may come before 21 answers: the
        # load goes on until it has them (any error still fails below).
        wait_until(lambda: sum(load.statuses.values()) > 20, 120, "21 answers")

    assert load.statuses[200] > 20
    assert set(load.statuses) == {200}, load.statuses  # in-flight requests were sent again
    assert load.slowest_s < 15  # nothing hung
    assert recovered_s < 60


def test_a_redeploy_under_load_drains_in_flight_requests(faults_url: str, tmp_path: Path):
    before = replica_actor_names()
    with SteadyLoad(faults_url, clients=4) as load:
        # New top_k restarts the Preprocessor; new num_cpus restarts the model replicas.
        deploy_faults_app(tmp_path, top_k=2, model_cpus=0.9)
        wait_app_running(APP, 180)
        wait_until(lambda: not set(before) & set(replica_actor_names()), 120,
                   "the old model replicas to be gone")

    assert set(load.statuses) == {200}, load.statuses
    assert load.top_k == {3, 2}  # served by the old version, then by the new
    assert load.slowest_s < 30
