"""One Ray cluster and one Serve instance for the whole test session.

The app under test is deployed the way a user deploys it: ``serve run
configs/config.yaml`` in a subprocess, joining this session's cluster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from deployments.server_env import read_env_file

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SAMPLES = sorted((ROOT / "models" / "samples").iterdir())
APP_NAME = "ray-tf-serve"  # as named in configs/config.yaml


def sample_label(path: Path) -> str:
    return path.name.split("_")[1]  # digit_<label>_<size>_<mode>.<ext>


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture(scope="session")
def cluster_address() -> Iterator[str]:
    # The cluster's processes serve with configs/server.env, as `make serve`
    # does; this driver imported Serve before, so its handles keep the defaults.
    os.environ.update(read_env_file(ROOT / "configs" / "server.env"))
    # Deleted apps drain for 30 s by default (for HAProxy to stop routing to
    # them); the tests delete several apps and need no such grace.
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"
    # "local": a fresh cluster owned by this session, even if another runs here.
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def subprocess_env(cluster_address: str) -> dict[str, str]:
    return {**os.environ, "RAY_ADDRESS": cluster_address}


@pytest.fixture(scope="session")
def base_url(cluster_address: str, subprocess_env: dict[str, str]) -> str:
    """The app from configs/config.yaml, deployed with `serve run` on a free port."""
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    subprocess.run(
        [str(BIN / "serve"), "run", "--non-blocking", "configs/config.yaml"],
        cwd=ROOT, env=subprocess_env, check=True, timeout=300,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 180, "the app to be ready")
    return url


@pytest.fixture(scope="session")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c
