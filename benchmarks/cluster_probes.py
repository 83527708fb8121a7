"""How many replicas run, sampled while load runs."""

from __future__ import annotations

import threading
import time

from harness.cluster import running_replicas


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
