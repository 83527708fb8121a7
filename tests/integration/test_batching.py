"""Model replicas: threads from num_cpus, warm-up, bounded traces under XLA, and
batching retuned live from the YAML's user_config without restarts or errors."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from ray import serve
from ray.serve.schema import ApplicationStatus

from deployments.replica.batching import bucket_sizes
from harness.cluster import wait_until
from tests.common import APP_NAME, SAMPLES
from tests.integration.conftest import deploy_config, with_test_app

RETUNE_APP = "retune"


def model_stats(app: str) -> dict:
    return serve.get_deployment_handle("digits", app).stats.remote().result()


def test_replica_threads_follow_num_cpus_and_warm_up(client: httpx.Client):
    stats = model_stats(APP_NAME)
    assert stats["device"] == "/CPU:0"
    assert stats["intra_op_threads"] == 1  # num_cpus: 1 in configs/config.yaml
    # max_batch_size: auto in the config: the buckets up to what the replica picked.
    assert stats["buckets"] == bucket_sizes(stats["auto_batch_size"]["picked"])
    # Without XLA one trace serves every batch size, warm-up included.
    for rows in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 40):
        files = [("f", ("d.png", SAMPLES[0].read_bytes(), "image/png"))] * rows
        assert client.post("/predict", files=files).status_code == 200
    assert model_stats(APP_NAME)["traces"] == 1


def deploy(config: dict, tmp_path: Path) -> None:
    """Redeploy, and wait until the retune app runs its batch settings."""
    deploy_config(config, tmp_path)
    wanted = config["applications"][-1]["deployments"][-1]["user_config"]["max_batch_size"]

    def applied() -> bool:
        app = serve.status().applications.get(RETUNE_APP)
        if app is None or app.status != ApplicationStatus.RUNNING:
            return False
        return model_stats(RETUNE_APP)["max_batch_size"] == wanted

    wait_until(applied, 180, f"app {RETUNE_APP!r} with max_batch_size {wanted}")


def with_retune_app(user_config: dict) -> dict:
    """A second app: XLA on, one fixed replica."""
    return with_test_app(RETUNE_APP, model_args={"jit_compile": True},
                         deployment={"num_replicas": 1, "user_config": user_config})


@pytest.fixture(scope="module")
def retune_url(base_url: str, tmp_path_factory) -> Iterator[str]:
    deploy(with_retune_app({"max_batch_size": 8, "batch_wait_timeout_s": 0.01}),
           tmp_path_factory.mktemp("retune"))
    yield f"{base_url}/{RETUNE_APP}"
    serve.delete(RETUNE_APP, _blocking=False)  # (goes while the next module starts)


def test_xla_traces_stay_bounded_by_the_buckets(retune_url: str):
    before = model_stats(RETUNE_APP)
    assert before["buckets"] == [1, 2, 4, 8]
    assert before["traces"] == 4  # warm-up compiled each bucket once
    rng = np.random.default_rng(0)
    with httpx.Client(timeout=60) as c:
        for rows in (1, 3, 5, 6, 7, 9, 11, 13, 17, 21):
            batch = rng.random((rows, 28, 28, 1), dtype=np.float32)
            r = c.post(f"{retune_url}/predict", json={"instances": batch.tolist()})
            assert r.status_code == 200 and len(r.json()["predictions"]) == rows
    assert model_stats(RETUNE_APP)["traces"] == 4


def test_user_config_retunes_live_without_restart_or_lost_requests(
    retune_url: str, tmp_path: Path
):
    before = model_stats(RETUNE_APP)
    stop = threading.Event()
    statuses: list[int] = []

    def load(rows: int) -> None:
        files = [("f", (p.name, p.read_bytes(), "image/png")) for p in SAMPLES[:rows]]
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                r = c.post(f"{retune_url}/predict", files=files)
                statuses.append(r.status_code)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load, rows) for rows in (1, 1, 7, 10)]
        deploy(with_retune_app({"max_batch_size": 16, "batch_wait_timeout_s": 0.002}),
               tmp_path / "grow")
        grown = model_stats(RETUNE_APP)
        # Lowering the limit while 7- and 10-row chunks are queued must not fail them.
        deploy(with_retune_app({"max_batch_size": 2, "batch_wait_timeout_s": 0.001}),
               tmp_path / "shrink")
        shrunk = model_stats(RETUNE_APP)
        stop.set()
        for f in futures:
            f.result()

    assert grown["pid"] == shrunk["pid"] == before["pid"]  # same process: no restart
    assert grown["max_batch_size"] == 16 and grown["batch_wait_timeout_s"] == 0.002
    assert grown["buckets"] == [1, 2, 4, 8, 16]
    assert grown["traces"] == 5  # only the new bucket was compiled, before serving it
    assert shrunk["max_batch_size"] == 2
    assert shrunk["traces"] == 5  # smaller limits reuse warm buckets
    assert len(statuses) > 20 and set(statuses) == {200}
