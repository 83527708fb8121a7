"""A model that cannot load fails its replica with a message naming the path and
the cause, shown in `serve status`; nothing hangs and the main app is unharmed."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from ray import serve
from ray.serve.schema import ApplicationStatus

from harness.cluster import http_ok, wait_until
from tests.common import CONFIG, ROOT, SAMPLES, TLS
from tests.integration.conftest import deploy_config, with_test_app

# Models that cannot load, deployed at once (each fails after Serve's retries).
FAILING = {
    "missing": (lambda tmp: tmp / "does-not-exist", None),
    "not-a-savedmodel": (lambda tmp: tmp, None),
    "mislabelled": (lambda tmp: ROOT / "models/digits", "labels.txt"),
}


@pytest.fixture(scope="module")
def failed(base_url: str, tmp_path_factory
           ) -> Iterator[dict[str, tuple[Path, ApplicationStatus, str]]]:
    """Each failing app's status message, by name, with the path its model named."""
    tmp = tmp_path_factory.mktemp("failing")
    (tmp / "labels.txt").write_text("a\nb\n")
    config = yaml.safe_load(CONFIG.read_text())
    paths = {}
    for name, (make_path, labels) in FAILING.items():
        paths[name] = make_path(tmp)
        model = {"name": name, "path": str(paths[name]),
                 **({"labels_path": str(tmp / labels)} if labels else {})}
        config["applications"].append({"name": name, "route_prefix": f"/{name}",
                                       "import_path": "deployments.app:build_app",
                                       "args": {"models": [model]}})
    deploy_config(config, tmp / "deploy")

    def settled() -> bool:
        apps = serve.status().applications
        return all(n in apps and apps[n].status in (ApplicationStatus.DEPLOY_FAILED,
                                                    ApplicationStatus.RUNNING)
                   for n in FAILING)

    wait_until(settled, 240, "the failing apps to settle")
    apps = serve.status().applications
    yield {name: (paths[name], apps[name].status, apps[name].deployments[name].message)
           for name in FAILING}
    for name in FAILING.keys() & serve.status().applications.keys():  # (a redeploy may
        serve.delete(name, _blocking=False)                           # have dropped them)


@pytest.mark.parametrize(("name", "cause"), [("missing", "no such directory"),
                                             ("not-a-savedmodel", "no saved_model.pb in it")])
def test_unloadable_model_fails_clearly(failed, client: httpx.Client, name, cause):
    path, status, message = failed[name]
    assert status == ApplicationStatus.DEPLOY_FAILED
    assert str(path) in message and cause in message
    r = client.post("/predict", content=SAMPLES[0].read_bytes(),
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200


def test_labels_that_do_not_match_the_model_fail_clearly(failed):
    _, status, message = failed["mislabelled"]
    assert status == ApplicationStatus.DEPLOY_FAILED
    assert "has 2 labels but the model outputs 10 scores" in message


def test_callers_of_a_model_with_no_replica_share_one_wait(base_url: str, tmp_path: Path):
    """Replicas that cannot be placed (here: a resource no node has) leave the
    model without a replica. Concurrent callers share one metadata fetch and
    its 503, rather than each waiting out its own timeout in turn."""
    config = with_test_app("unplaced", deployment={
        "num_replicas": 1, "ray_actor_options": {"num_cpus": 0, "resources": {"absent": 1}}})
    deploy_config(config, tmp_path)
    url = f"{base_url}/unplaced"
    try:
        wait_until(lambda: http_ok(f"{url}/healthz"), 120, "the unplaced app's ingress")
        image = {"content": SAMPLES[0].read_bytes(), "headers": {"Content-Type": "image/png"}}

        def predict(_: int) -> httpx.Response:
            return httpx.post(f"{url}/predict", **image, timeout=120, verify=TLS)

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(predict, range(6)))
        waited = time.monotonic() - started
        assert [r.status_code for r in answers] == [503] * 6
        assert all("'digits' is not available" in r.json()["error"] for r in answers)
        # One fetch times out after 10 s; six in turn would take a minute.
        assert waited < 30
    finally:
        serve.delete("unplaced", _blocking=False)  # (goes while the next test runs)
