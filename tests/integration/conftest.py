"""One Ray cluster and one Serve instance for the whole test session.

The app under test is deployed the way a user deploys it: ``serve run
configs/config.yaml`` in a subprocess, joining this session's cluster.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
import yaml
from ray import serve

from deployments.shipping import MODEL_DIR_ENV
from harness.cluster import (
    driver_env,
    free_port,
    keep_routing_of,
    serve_run,
    start_cluster,
    wait_ready,
)
from tests.common import CONFIG, ROOT


@pytest.fixture(scope="session")
def cluster_address(tmp_path_factory) -> Iterator[str]:
    # Shipped models unpack here, not in the directory every cluster on this
    # machine shares (a test deletes its copy).
    os.environ[MODEL_DIR_ENV] = str(tmp_path_factory.mktemp("shipped-models"))
    # Drains of 5 s: with 1 s, a redeploy under load once stopped an ingress
    # replica before HAProxy, reloading on a saturated machine, stopped routing
    # to it (a connection closed without an answer).
    yield start_cluster(ROOT / "configs" / "server.env", drain_s=5, num_cpus=8)
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def subprocess_env(cluster_address: str) -> dict[str, str]:
    return driver_env()


@pytest.fixture(scope="session")
def ports(cluster_address: str) -> dict[str, int]:
    """Serve started on free HTTP and gRPC ports, with the config's gRPC service."""
    grpc_options = yaml.safe_load(CONFIG.read_text())["grpc_options"]
    chosen = {"http": free_port(), "grpc": free_port()}
    serve.start(http_options={"host": "127.0.0.1", "port": chosen["http"]},
                grpc_options={**grpc_options, "port": chosen["grpc"]})
    return chosen


@pytest.fixture(scope="session")
def base_url(ports: dict[str, int]) -> str:
    """The app from configs/config.yaml, deployed with `serve run`."""
    serve_run(CONFIG, cwd=ROOT)
    url = f"http://127.0.0.1:{ports['http']}"
    wait_ready(url, 180)
    return url


@pytest.fixture(scope="session")
def grpc_address(base_url: str, ports: dict[str, int]) -> str:
    return f"127.0.0.1:{ports['grpc']}"


@pytest.fixture(scope="session")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


def with_test_app(name: str, args: dict | None = None, model_args: dict | None = None,
                  deployment: dict | None = None) -> dict:
    """configs/config.yaml plus an app ``name`` at ``/name`` serving the config's
    first model without autoscaling and with a fixed max_batch_size (no timing
    at start-up); the overrides merge into the app's args, that model's args
    and its deployment's settings."""
    config = yaml.safe_load(CONFIG.read_text())
    app = copy.deepcopy(config["applications"][0])
    app.update(name=name, route_prefix=f"/{name}")
    app["args"]["models"] = [{**app["args"]["models"][0], **(model_args or {})}]
    app["args"].update(args or {})
    preprocessor, model = app["deployments"][:2]
    keep_routing_of(preprocessor, app["args"]["models"])
    model.pop("autoscaling_config")
    model["user_config"] = {**model["user_config"], "max_batch_size": 32}
    model.update(deployment or {})
    app["deployments"] = [preprocessor, model]
    config["applications"].append(app)
    return config


def deploy_config(config: dict, tmp_path: Path) -> None:
    """`serve run` a whole config, as a user redeploys one."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_run(path, cwd=ROOT)
