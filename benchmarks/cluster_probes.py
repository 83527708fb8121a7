"""What the cluster itself reports while load runs: model replicas' resident
memory, the object store's use, and how many replicas are running."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from ray import serve
from ray._private.internal_api import memory_summary

from deployments.local import running_replicas


def replica_pids(app: str, deployment: str, replicas: int, tries: int = 50) -> list[int]:
    """The pids of a deployment's replicas, learned from their own ``stats``."""
    handle = serve.get_deployment_handle(deployment, app)
    pids: set[int] = set()
    for _ in range(tries):
        pids.add(handle.stats.remote().result()["pid"])
        if len(pids) >= replicas:
            break
    return sorted(pids)


def rss_mb(pid: int) -> float:
    """Resident memory of a local process (this machine's replicas)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def object_store_mb() -> float:
    match = re.search(r"Plasma memory usage (\d+) MiB", memory_summary(stats_only=True))
    return float(match.group(1)) if match else 0.0


class ReplicaCounter:
    """Samples a deployment's running replicas once a second, in a thread."""

    def __init__(self, app: str, deployment: str) -> None:
        self._app, self._deployment = app, deployment
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            running = running_replicas(self._app).get(self._deployment, 0)
            self.samples.append((time.perf_counter() - start, running))
            self._stop.wait(1.0)

    def __enter__(self) -> ReplicaCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
