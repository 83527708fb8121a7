"""``ship: true``: the model travels through the object store, each replica
loads its own local copy, and the source may be gone after deploy."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from deployments.shipping import (
    NAMESPACE,
    STORE_PREFIX,
    CannotTell,
    clean,
    local_root,
    store_names,
)
from harness.cluster import replica_actor_names, running_replicas, wait_app_running, wait_until
from tests.common import ROOT, SAMPLES
from tests.integration.conftest import deploy_config, with_test_app

APP = "shipped"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the model that this test owns, and deletes."""
    path = tmp_path_factory.mktemp("source") / "digits"
    shutil.copytree(ROOT / "models" / "digits", path)
    return path


@pytest.fixture(scope="module")
def shipped_url(base_url: str, source: Path, tmp_path_factory) -> Iterator[str]:
    config = with_test_app(APP, model_args={
        "path": str(source), "labels_path": str(source / "labels.txt"), "ship": True})
    deploy_config(config, tmp_path_factory.mktemp("shipped"))
    wait_app_running(APP, 180)
    yield f"{base_url}/{APP}"
    serve.delete(APP, _blocking=False)  # (goes while the next module starts)


def predict_all(url: str) -> list[str]:
    files = [("f", (p.name, p.read_bytes(), "image/png")) for p in SAMPLES]
    response = httpx.post(f"{url}/predict", files=files, timeout=60)
    assert response.status_code == 200, response.text
    return [row["top_k"][0]["label"] for row in response.json()["predictions"]]


def test_replicas_load_their_own_copy_and_survive_the_source(shipped_url, base_url, source):
    model = serve.get_deployment_handle("digits", APP)
    stats = model.stats.remote().result()
    local = Path(stats["path"])  # version 1 in this node's copy of the model
    assert local.parent.parent == local_root() and local.name == "1"
    assert (local / "saved_model.pb").read_bytes() == (source / "1" / "saved_model.pb").read_bytes()
    assert (local.parent / "labels.txt").read_text() == (source / "labels.txt").read_text()
    expected = predict_all(base_url)  # the main app, loaded from the repository
    assert predict_all(shipped_url) == expected

    shutil.rmtree(source)
    shutil.rmtree(local.parent)  # a new replica must fetch it from the object store again
    (victim,) = replica_actor_names(APP, "digits")
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    wait_until(lambda: running_replicas(APP).get("digits") == 1
               and victim not in replica_actor_names(APP, "digits"), 120,
               "a new replica of the shipped model")
    assert predict_all(shipped_url) == expected
    assert model.stats.remote().result()["path"] == str(local)  # unpacked there again


@ray.remote(num_cpus=0)
class Stale:
    """Stands for a store actor no app uses any more."""


def test_stale_model_stores_are_cleaned_and_used_ones_kept(shipped_url):
    in_use = serve.get_deployment_handle("digits", APP).stats.remote().result()["shipped"]
    name = f"{STORE_PREFIX}{'0' * 24}"
    Stale.options(name=name, namespace=NAMESPACE, lifetime="detached").remote()
    assert name in store_names()
    assert clean() == [name]
    assert store_names() == [f"{STORE_PREFIX}{in_use[:24]}"]
    assert predict_all(shipped_url)  # the app's store is still there


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class Unwell:
    """A deployment with a ``stats`` that fails: it may be using any store."""

    def stats(self) -> dict:
        raise RuntimeError("unwell")


def test_cleaning_removes_nothing_while_an_app_cannot_say_what_it_uses(shipped_url):
    name = f"{STORE_PREFIX}{'1' * 24}"
    Stale.options(name=name, namespace=NAMESPACE, lifetime="detached").remote()
    serve.run(Unwell.bind(), name="unwell", route_prefix=None)
    try:
        with pytest.raises(CannotTell, match="'Unwell' of app 'unwell'"):
            clean()
        assert name in store_names()
    finally:
        serve.delete("unwell")
    assert clean() == [name]
