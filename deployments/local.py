"""Run the app on a local Ray cluster from Python, the way a user runs it:
the cluster's processes get ``configs/server.env``, apps are deployed with
``serve run``. The tests and the benchmark both start their servers here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import ray


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines; blank lines and ``#`` comments are skipped."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def start_cluster(env_file: Path, **init_args: object) -> str:
    """A fresh local cluster whose processes serve with ``env_file``; its address.

    The variables are set after this driver imported Serve, so they reach the
    cluster's processes while this driver's own handles keep Serve's defaults.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.update(read_env_file(env_file))
    # "local": a new cluster owned by this process, even if another runs here.
    ray.init(address="local", include_dashboard=False, log_to_driver=False, **init_args)
    return ray.get_runtime_context().gcs_address


def driver_env() -> dict[str, str]:
    """The environment of another process joining this driver's cluster."""
    return {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def serve_run(config: Path, cwd: Path, quiet: bool = False) -> None:
    """``serve run --non-blocking config`` on this driver's cluster, from ``cwd``
    (where the config's relative model paths start)."""
    output = subprocess.DEVNULL if quiet else None
    subprocess.run(
        [str(Path(sys.executable).parent / "serve"), "run", "--non-blocking", str(config)],
        cwd=cwd, env=driver_env(), check=True, timeout=300, stdout=output, stderr=output,
    )


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def wait_ready(url: str, timeout_s: float = 300) -> None:
    """Until ``GET {url}/readyz`` answers 200 (a model replica is up)."""

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                return response.status == 200
        except OSError:  # refused, reset, timed out, or an HTTP error status
            return False

    wait_until(ready, timeout_s, f"{url} to be ready")
