"""After a few thousand requests, the model replicas' memory and the object
store are back at their post-warm-up level: per-request arrays and ObjectRefs
are released."""

from __future__ import annotations

import concurrent.futures

import httpx

from harness.cluster import replica_pids, running_replicas, wait_until
from harness.probes import object_store_mb, rss_mb
from tests.common import APP_NAME, SAMPLES


def send(base_url: str, count: int) -> int:
    """``count`` requests from 8 clients: images and JSON batches; the 200s."""
    image = SAMPLES[4].read_bytes()
    rows = {"instances": [[0.5] * 64] * 16}

    def client(n: int) -> int:
        ok = 0
        with httpx.Client(base_url=base_url, timeout=60) as c:
            for i in range(n):
                if i % 2:
                    r = c.post("/predict", content=image, headers={"Content-Type": "image/png"})
                else:
                    r = c.post("/models/digits_linear/predict", json=rows)
                ok += r.status_code == 200
        return ok

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return sum(pool.map(client, [count // 8] * 8))


def test_memory_returns_to_its_post_warmup_level(base_url: str):
    send(base_url, 400)  # warm-up: TF's allocator, Serve's queues, HTTP pools
    pids = replica_pids(APP_NAME, "digits", running_replicas(APP_NAME)["digits"])
    rss_before = {pid: rss_mb(pid) for pid in pids}
    store_before = object_store_mb()

    assert send(base_url, 3000) == 3000

    # The last references are released soon after the last answers.
    wait_until(lambda: object_store_mb() <= store_before + 1, 30,  # MiB granularity
               "the object store to return to its post-warm-up use")
    for pid, before in rss_before.items():
        assert rss_mb(pid) <= before * 1.05, (pid, before, rss_mb(pid))
