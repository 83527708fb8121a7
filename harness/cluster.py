"""Run the app on a local Ray cluster from Python, the way a user runs it:
the cluster's processes get ``configs/server.env``, apps are deployed with
``serve run``. The tests and the benchmark both start their servers here.
"""

from __future__ import annotations

import fcntl
import functools
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import ray
from ray import serve
from ray.serve.schema import ApplicationStatus

from deployments.envfile import read_env_file
from deployments.haproxy import launcher_env

# Ports that nothing picks on its own: above Ray's worker ports (10002-19999),
# below Serve's direct-ingress replica ports (30000+) and Linux's ephemeral
# range (32768+), where the OS and Ray's own processes take theirs. A port
# chosen here stays free while a cluster starts, until its server binds it.
_QUIET_PORTS = range(20000, 30000)
# Claims on ports and port ranges, shared by every process on this host (the
# test runs `make test` starts side by side, a benchmark): a file per claim,
# locked by its claimant until it exits, when the OS drops the lock.
_CLAIMS = Path(tempfile.gettempdir()) / "ray-tf-serve-port-claims"
_held: dict[str, int] = {}


def _claim(name: str) -> bool:
    """Whether this process now holds the claim ``name`` (it keeps it till it exits)."""
    if name in _held:
        return False
    _CLAIMS.mkdir(exist_ok=True)
    fd = os.open(_CLAIMS / name, os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _held[name] = fd
    return True


def free_port() -> int:
    """A TCP port free on every interface now, not handed out before to this or
    any other process on this host that is still running."""
    for _ in range(1000):
        port = random.choice(_QUIET_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        if _claim(f"port-{port}"):
            return port
    raise RuntimeError(f"no free port in {_QUIET_PORTS}")


@functools.cache
def replica_ports() -> dict[str, str]:
    """Port ranges of this process's own for the ingress replicas of the
    clusters it starts (one at a time), as Serve's variables. Serve's HAProxy
    reaches each replica on a port from a range every cluster on a host starts
    at the same place (HTTP 30000+, gRPC 40000+), and gRPC servers share a port
    (SO_REUSEPORT): a cluster beside another would take some of its gRPC calls.
    Slot 0, Serve's own ranges, is left to clusters started elsewhere (`make
    serve`)."""
    for slot in range(1, 20):
        if _claim(f"replica-ports-{slot}"):
            http, grpc = 30000 + 500 * slot, 40000 + 500 * slot
            return {
                "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
                "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http + 499),
                "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc),
                "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc + 499),
            }
    raise RuntimeError("every replica port range is claimed")


def start_cluster(env_file: Path | None, drain_s: int | None = None,
                  **init_args: object) -> str:
    """A fresh local cluster whose processes serve with ``env_file`` (``None``:
    Serve's defaults); its address.

    The variables are set after this driver imported Serve, so they reach the
    cluster's processes while this driver's own handles keep Serve's defaults.
    ``drain_s`` shortens how long a stopping ingress replica (a deleted app's,
    a redeploy's) drains, 30 s by default, for HAProxy to stop routing to it:
    for tests and benchmarks that delete apps. It must still outlast HAProxy's
    reload on a busy machine.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if env_file is not None:
        os.environ.update(read_env_file(env_file) | launcher_env())
    # HAProxy and its fallback proxy listen on fixed ports by default (9101,
    # 8404, 8500, 9500): free ones let two local clusters (a test run beside a
    # benchmark or `make serve`) run at once.
    for name in ("RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT",
                 "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"):
        os.environ.setdefault(name, str(free_port()))
    if "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT" not in os.environ:
        os.environ.update(replica_ports())
    if drain_s is not None:
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = str(drain_s)
    # "local": a new cluster owned by this process, even if another runs here.
    # No idle workers started ahead: replicas run in runtime environments of their
    # own and never take one (each cost ~1.5 s of CPU, one per CPU).
    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             _system_config={"enable_worker_prestart": False}, **init_args)
    return ray.get_runtime_context().gcs_address


def driver_env() -> dict[str, str]:
    """The environment of another process joining this driver's cluster."""
    return {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def keep_routing_of(preprocessor: dict, models: list[dict]) -> None:
    """A Preprocessor deployment's settings copied from configs/ into an app
    serving only ``models``: labels of models it does not serve go (the
    ingress refuses them, as it would a typo)."""
    served = {m["name"] for m in models}
    config = preprocessor.setdefault("user_config", {})
    config["models"] = {k: v for k, v in config.get("models", {}).items() if k in served}


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


def wait_app_running(app: str, timeout_s: float = 300) -> None:
    """Until Serve reports the app RUNNING (deployed, every replica up)."""
    def running() -> bool:
        status = serve.status().applications.get(app)
        return status is not None and status.status == ApplicationStatus.RUNNING

    wait_until(running, timeout_s, f"app {app!r} to run")


def running_replicas(app: str) -> dict[str, int]:
    """How many replicas of each of an app's deployments run now."""
    status = serve.status().applications.get(app)
    if status is None:
        return {}
    return {name: sum(n for state, n in d.replica_states.items()
                      if str(state).endswith("RUNNING"))
            for name, d in status.deployments.items()}


def replica_actor_names(app: str, deployment: str) -> list[str]:
    """The Ray actor names of a deployment's replicas (namespace ``serve``)."""
    names = ray.util.list_named_actors(all_namespaces=True)
    return sorted(n["name"] for n in names
                  if n["name"].startswith(f"SERVE_REPLICA::{app}#{deployment}#"))


def replica_stats(app: str, deployment: str, replicas: int, tries: int = 50
                  ) -> dict[int, dict]:
    """Each replica's own ``stats()`` by pid, asked until ``replicas`` answered
    (Serve routes each call to any replica)."""
    handle = serve.get_deployment_handle(deployment, app)
    stats: dict[int, dict] = {}
    for _ in range(tries):
        answer = handle.stats.remote().result()
        stats[answer["pid"]] = answer
        if len(stats) >= replicas:
            break
    return stats


def replica_pids(app: str, deployment: str, replicas: int, tries: int = 50) -> list[int]:
    """The pids of a model deployment's replicas, learned from their own ``stats``."""
    return sorted(replica_stats(app, deployment, replicas, tries))


def http_ok(url: str) -> bool:
    """Whether ``GET url`` answers 200 now (refused, reset, timed out or an
    error status are all "no")."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def wait_ready(url: str, timeout_s: float = 300) -> None:
    """Until ``GET {url}/readyz`` answers 200 (a model replica is up)."""
    wait_until(lambda: http_ok(f"{url}/readyz"), timeout_s, f"{url} to be ready")
