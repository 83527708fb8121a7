"""Versions picked up live from the model's base path, under load, on two
model replicas: a new version replaces the old one, a broken one is reported
and changes nothing, removing versions rolls back; no request fails and no
replica restarts."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ray import serve

from harness.cluster import replica_actor_names, wait_app_running, wait_until
from tests.common import ROOT, SAMPLES
from tests.integration.conftest import deploy_config, with_test_app

APP = "live"
DIGITS = ROOT / "models" / "digits"


def add_version(base: Path, version: int, broken: bool = False) -> None:
    """Copied in beside the base path, then renamed into it, as a deploy job would."""
    staging = base.parent / f".staging-{version}"
    shutil.copytree(DIGITS / "1", staging)
    if broken:
        (staging / "saved_model.pb").write_bytes(b"not a SavedModel")
    staging.rename(base / str(version))


@pytest.fixture(scope="module")
def live(base_url: str, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    base = tmp_path_factory.mktemp("live") / "digits"
    base.mkdir()
    add_version(base, 1)
    config = with_test_app(APP, model_args={
        "path": str(base), "labels_path": str(DIGITS / "labels.txt"),
        "version_policy": {"latest": 1}, "poll_interval_s": 0.5},
        deployment={"num_replicas": 2})
    deploy_config(config, tmp_path_factory.mktemp("live-config"))
    wait_app_running(APP, 180)
    yield f"{base_url}/{APP}", base
    serve.delete(APP, _blocking=False)  # (goes while the next module starts)


class Load:
    """Clients asking for the default version, recording (status, version)."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url, self.answers = url, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        image = {"content": SAMPLES[3].read_bytes(), "headers": {"Content-Type": "image/png"}}
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                r = client.post(f"{self.url}/predict", **image)
                self.answers.append((r.status_code, r.json().get("version")))

    def latest_version(self) -> int | None:
        return self.answers[-1][1] if self.answers else None

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def states(url: str) -> dict[str, tuple[str, str]]:
    status = httpx.get(f"{url}/v1/models/digits", timeout=30).json()["model_version_status"]
    return {s["version"]: (s["state"], s["status"]["error_message"]) for s in status}


def test_versions_come_and_go_live_under_load(live):
    url, base = live
    replicas = set(replica_actor_names(APP, "digits"))
    with Load(url) as load:
        wait_until(lambda: load.latest_version() == 1, 60, "answers from version 1")
        add_version(base, 2)
        wait_until(lambda: load.latest_version() == 2 and states(url).get("1", ("",))[0]
                   == "END", 60, "version 2 to replace version 1")
        add_version(base, 3, broken=True)
        wait_until(lambda: "cannot load model 'digits'" in states(url).get("3", ("", ""))[1]
                   and states(url)["2"] == ("AVAILABLE", ""), 60,
                   "version 3 to fail to load, version 2 still served")
        shutil.rmtree(base / "3")
        shutil.rmtree(base / "2")  # back to version 1, as a rollback would
        wait_until(lambda: load.latest_version() == 1 and states(url).get("2", ("",))[0]
                   == "END", 60, "version 1 to be served again")
    statuses = {status for status, _ in load.answers}
    assert statuses == {200}, [a for a in load.answers if a[0] != 200][:5]
    versions = [v for _, v in load.answers]
    assert set(versions) == {1, 2} and versions.index(2) < len(versions) - 1
    assert set(replica_actor_names(APP, "digits")) == replicas  # no replica restarted
