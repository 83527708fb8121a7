"""Coalescing at the ingress on a real cluster: concurrent requests share model
calls, each caller gets its own rows in order, a bad or departed member does
not touch its batch-mates, and the settings retune live without a restart."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from ray import serve
from ray.serve.schema import ApplicationStatus

from harness.cluster import wait_until
from tests.common import APP_NAME, SAMPLES, TLS
from tests.integration.conftest import deploy_config, with_test_app

COALESCE_APP = "coalesce"
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg"}


def ingress_stats(app: str) -> dict:
    return serve.get_app_handle(app).stats.remote().result()


def calls_and_requests(app: str) -> tuple[int, int]:
    counts = ingress_stats(app)["models"]["digits"]["versions"].get("1", {})
    return counts.get("calls", 0), counts.get("requests", 0)


def files_for(job: int) -> list:
    """Job ``job``'s upload: 1 to 3 samples, a different mix per job."""
    picked = [SAMPLES[(job + i) % len(SAMPLES)] for i in range(1 + job % 3)]
    return [("f", (p.name, p.read_bytes(), MEDIA_TYPES[p.suffix])) for p in picked]


def all_at_once(url: str, jobs: list[int],
                send: Callable[[httpx.Client, int], httpx.Response]) -> list[httpx.Response]:
    """``send(client, job)`` for each job, in 16 clients whose connections are
    open before any of them sends, so the first 16 requests arrive together;
    the answers in the jobs' order. (With a client connecting for each
    request, on a saturated machine a run's 84 requests made 84 model calls.)"""
    clients = 16
    ready = threading.Barrier(clients)

    def run(share: range) -> list[tuple[int, httpx.Response]]:
        with httpx.Client(base_url=url, timeout=60, verify=TLS) as c:
            assert c.get("/healthz").status_code == 200
            ready.wait(timeout=60)
            return [(i, send(c, jobs[i])) for i in share]

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        shares = [range(k, len(jobs), clients) for k in range(clients)]
        answers = dict(pair for pairs in pool.map(run, shares) for pair in pairs)
    return [answers[i] for i in range(len(jobs))]


def labels_of(response: httpx.Response) -> list[tuple[str, float]]:
    assert response.status_code == 200, response.text
    return [(p["top_k"][0]["label"], p["top_k"][0]["probability"])
            for p in response.json()["predictions"]]


def test_concurrent_requests_share_calls_and_each_gets_its_own_rows(
    client: httpx.Client, base_url: str
):
    jobs = range(48)
    alone = {j: labels_of(client.post("/predict", files=files_for(j))) for j in jobs[:6]}
    calls_before, requests_before = calls_and_requests(APP_NAME)

    def post(c: httpx.Client, job: int) -> httpx.Response:
        if job % 8 == 7:  # a corrupt image among good ones
            return c.post("/predict", content=b"\x89PNG broken",
                          headers={"Content-Type": "image/png"})
        return c.post("/predict", files=files_for(job))

    responses = all_at_once(base_url, [*jobs] * 2, post)

    for job, response in zip([*jobs] * 2, responses, strict=True):
        if job % 8 == 7:
            assert response.status_code == 400 and "cannot decode" in response.json()["error"]
            continue
        mine = labels_of(response)
        assert len(mine) == 1 + job % 3
        if job in alone:  # the same rows as when it ran alone, in order
            assert [label for label, _ in mine] == [label for label, _ in alone[job]]
            for (_, p), (_, q) in zip(mine, alone[job], strict=True):
                assert p == pytest.approx(q, abs=1e-4)
    calls, requests = calls_and_requests(APP_NAME)
    good = sum(job % 8 != 7 for job in [*jobs] * 2)
    assert requests - requests_before == good
    assert calls - calls_before < good  # requests shared model calls


def test_clients_that_leave_mid_request_do_not_disturb_their_batch_mates(
    client: httpx.Client, base_url: str
):
    def post(job: int) -> int | str:
        # Every third client gives up almost at once: its request is cancelled
        # wherever it is (queued for a batch, or in a model call).
        timeout = 0.005 if job % 3 == 0 else 60
        try:
            with httpx.Client(base_url=base_url, timeout=timeout, verify=TLS) as c:
                return c.post("/predict", files=files_for(job)).status_code
        except httpx.TimeoutException:
            return "gone"

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(post, range(60)))
    stayed = [o for job, o in zip(range(60), outcomes, strict=True) if job % 3]
    assert stayed and set(stayed) == {200}
    assert labels_of(client.post("/predict", files=files_for(1)))  # still serving


def with_coalesce_app(coalesce: dict) -> dict:
    """A second app whose model picks its own batch size (``auto``)."""
    config = with_test_app(COALESCE_APP, deployment={
        "num_replicas": 1, "user_config": {"max_batch_size": "auto"}})
    preprocessor = config["applications"][-1]["deployments"][0]
    preprocessor["user_config"] = {"coalesce": coalesce}
    return config


def deploy(coalesce: dict, tmp_path: Path) -> None:
    deploy_config(with_coalesce_app(coalesce), tmp_path)

    def applied() -> bool:
        app = serve.status().applications.get(COALESCE_APP)
        if app is None or app.status != ApplicationStatus.RUNNING:
            return False
        applied = ingress_stats(COALESCE_APP)["coalesce"]
        return all(applied[key] == value for key, value in coalesce.items())

    wait_until(applied, 180, f"app {COALESCE_APP!r} with {coalesce}")


@pytest.fixture(scope="module")
def coalesce_url(base_url: str, tmp_path_factory) -> Iterator[str]:
    deploy({"enabled": False}, tmp_path_factory.mktemp("coalesce"))
    yield f"{base_url}/{COALESCE_APP}"
    serve.delete(COALESCE_APP, _blocking=False)  # (goes while the next module starts)


def burst(url: str) -> list[int]:
    answers = all_at_once(url, list(range(64)),
                          lambda c, job: c.post("/predict", files=files_for(job)))
    return [a.status_code for a in answers]


def test_coalescing_retunes_live_without_restarting_the_ingress(
    coalesce_url: str, tmp_path: Path
):
    pid = ingress_stats(COALESCE_APP)["pid"]
    assert set(burst(coalesce_url)) == {200}
    calls, requests = calls_and_requests(COALESCE_APP)
    assert calls == requests == 64  # off: one model call per request

    deploy({"enabled": True, "max_calls_in_flight": 1, "max_rows": 8}, tmp_path)
    assert set(burst(coalesce_url)) == {200}
    stats = ingress_stats(COALESCE_APP)
    assert stats["pid"] == pid  # the same process: retuned, not restarted
    counts = stats["models"]["digits"]["versions"]["1"]
    assert counts["requests"] == 128
    assert counts["calls"] - 64 < 64
    assert max(counts["rows_per_call"]) <= 8


def test_auto_batch_size_is_measured_explained_and_followed_by_the_ingress(
    coalesce_url: str,
):
    stats = serve.get_deployment_handle("digits", COALESCE_APP).stats.remote().result()
    auto = stats["auto_batch_size"]
    rates = {int(size): rate for size, rate in auto["rows_per_s"].items()}
    assert stats["max_batch_size"] == auto["picked"] in rates
    assert max(rates.values()) * 0.95 <= rates[auto["picked"]]
    assert all(rate < max(rates.values()) * 0.95 for size, rate in rates.items()
               if size < auto["picked"])  # the smallest one that close to the best
    assert "within 5%" in auto["why"]
    assert stats["buckets"][-1] == auto["picked"]
    # The ingress coalesces up to what the model picked (no max_rows set here).
    meta = serve.get_app_handle(COALESCE_APP).metadata.remote().result()
    assert meta.max_batch_size == auto["picked"]
