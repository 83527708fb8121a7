"""The ingress's data plane in another Ray job's own process: its asyncio code
reaches a model's replicas straight through their handles, without the
Preprocessor's extra hop, and its concurrent calls are coalesced as the
ingress coalesces requests (a ``ray.put``, a handle call and its return paid
once per batch, not once per call).

    client = DirectClient.for_app("ray-tf-serve", ["digits"])
    outputs = await client.predict({"image": batch})  # every output by name

Inputs are checked against the signature here, as the ingress checks them
(the replica runs them as they are); encoded images are not decoded: send arrays. What
the app's ingress adds around a model is not here: the config's
pre/postprocess code, labels and traffic splits, pipelines, its limits (the
defaults apply) and the request counter (the model-call metrics are kept).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import ray
from ray import serve

from deployments.config import InputLimits
from deployments.ingress.coalescing import CoalesceSettings
from deployments.ingress.dataplane import DataPlane
from deployments.ingress.model_client import RayModelClient
from deployments.ingress.registry import DeploymentClient, ModelRegistry
from deployments.ingress.request import Target
from deployments.metrics import IngressMetrics
from deployments.types import Outputs


class DirectClient:
    """Models of one app called from this process through the data plane."""

    def __init__(self, clients: Mapping[str, DeploymentClient],
                 limits: InputLimits | None = None,
                 coalesce: CoalesceSettings | None = None) -> None:
        registry = ModelRegistry(clients, IngressMetrics(list(clients)))
        if coalesce is not None:
            registry.retune(coalesce)
        self.plane = DataPlane(registry, limits or InputLimits())

    @classmethod
    def for_app(cls, app: str, models: Sequence[str], limits: InputLimits | None = None,
                coalesce: CoalesceSettings | None = None) -> DirectClient:
        """``models`` of the running app ``app`` (each is its own deployment),
        the first the default. (``ray-tf-serve``, the CLI, deploys each model
        as an app of its own, ``deployments.config.model_app(name)``: build
        the clients from those handles and pass them to the constructor.)"""
        clients = {name: RayModelClient(name, serve.get_deployment_handle(name, app))
                   for name in models}
        return cls(clients, limits, coalesce)

    async def predict(self, inputs: Mapping[str, np.ndarray | ray.ObjectRef],
                      model: str | None = None, version: int | None = None,
                      signature: str | None = None) -> Outputs:
        """Every output of ``model``'s ``version`` (none: the highest) for
        ``inputs`` (arrays, or objects in the store, by input name)."""
        target = Target(model, version, signature=signature)
        meta = await self.plane.resolve(target)
        answer = await self.plane.infer(meta, inputs, pinned=target.pinned)
        return answer.outputs
