"""Ray's floor for a two-deployment path: an ingress that turns the body into
an array, puts it in the object store and calls a second deployment that only
reads it. No decoding, no model: what any two-tier design on Serve pays per
request before doing any work."""

from __future__ import annotations

import numpy as np
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
class FloorTarget:
    def __call__(self, batch: np.ndarray) -> int:
        return len(batch)


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
class FloorIngress:
    def __init__(self, target: DeploymentHandle) -> None:
        self._target = target.options(_by_reference=True)

    async def __call__(self, request: Request) -> dict:
        batch = np.frombuffer(await request.body(), dtype=np.float32)
        return {"rows": await self._target.remote(ray.put(batch))}


def floor_app() -> serve.Application:
    return FloorIngress.bind(FloorTarget.bind())
