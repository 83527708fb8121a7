"""A model replica killed under steady load: Serve replaces it, requests in
flight are sent again to a live replica, nothing hangs and nothing is lost."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import ray
import yaml
from ray import serve

from deployments.local import running_replicas, serve_run, wait_app_running, wait_until
from tests.integration.conftest import CONFIG, ROOT, SAMPLES

APP = "faults"


@pytest.fixture(scope="module")
def faults_url(base_url: str, tmp_path_factory) -> Iterator[str]:
    """configs/config.yaml plus an app with two fixed replicas of the digits model."""
    config = yaml.safe_load(CONFIG.read_text())
    (main,) = config["applications"]
    app = yaml.safe_load(yaml.safe_dump(main))
    app.update(name=APP, route_prefix=f"/{APP}")
    app["args"]["models"] = app["args"]["models"][:1]
    preprocessor, model = app["deployments"][:2]
    model.pop("autoscaling_config")
    model["num_replicas"] = 2
    app["deployments"] = [preprocessor, model]
    config["applications"].append(app)
    path = tmp_path_factory.mktemp("faults") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_run(path, cwd=ROOT)
    wait_app_running(APP, 180)
    yield f"{base_url}/{APP}"
    serve.delete(APP)


def replica_actor_names() -> list[str]:
    names = ray.util.list_named_actors(all_namespaces=True)
    return sorted(n["name"] for n in names
                  if n["name"].startswith(f"SERVE_REPLICA::{APP}#digits#"))


def test_a_killed_replica_loses_no_request(faults_url: str):
    assert len(replica_actor_names()) == 2
    # Big batches keep both replicas busy, so the kill lands on requests in flight.
    files = [("f", (p.name, p.read_bytes(), "image/png")) for p in SAMPLES] * 12
    statuses: Counter[int | str] = Counter()
    slowest = [0.0]
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    r = client.post(f"{faults_url}/predict", files=files)
                    statuses[r.status_code] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                slowest[0] = max(slowest[0], time.perf_counter() - started)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(load) for _ in range(6)]
        time.sleep(3)
        victim = replica_actor_names()[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at = time.monotonic()
        wait_until(lambda: running_replicas(APP).get("digits") == 2
                   and victim not in replica_actor_names(), 120, "a replacement replica")
        recovered_s = time.monotonic() - killed_at
        time.sleep(2)
        stop.set()
        for f in futures:
            f.result()

    assert statuses[200] > 20
    assert set(statuses) == {200}, statuses  # in-flight requests were sent again
    assert slowest[0] < 15  # nothing hung
    assert recovered_s < 60
