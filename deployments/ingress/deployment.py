"""The preprocessing deployment: the app's HTTP and gRPC ingress and its
Python API, wired to the model deployments through Ray.

The HTTP side is :func:`deployments.ingress.asgi.build_asgi`; every protocol decodes
its body with a pure codec into a numpy batch that takes a single data path
(:class:`deployments.ingress.dataplane.DataPlane`): checked against the model's
signature, coalesced with the requests waiting for the same model, put once
into the object store, and the ``ObjectRef`` handed to that model's
deployment (:class:`deployments.ingress.model_client.RayModelClient`).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from ray import ObjectRef, serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette

from deployments.config import (
    AuthArgs,
    CorsArgs,
    InputLimits,
    MonitoringArgs,
    PayloadLogArgs,
    model_app,
)
from deployments.ingress.asgi import build_asgi
from deployments.ingress.auth import Gate
from deployments.ingress.coalescing import CoalesceSettings
from deployments.ingress.dataplane import DataPlane
from deployments.ingress.model_client import RayModelClient
from deployments.ingress.payload_log import PayloadLogs
from deployments.ingress.protocols.health_grpc import HealthGrpcService
from deployments.ingress.protocols.monitoring import MonitoringPage, ray_nodes
from deployments.ingress.protocols.native import NativeApi
from deployments.ingress.protocols.tfserving_grpc import TFServingGrpcService
from deployments.ingress.protocols.v2_grpc import V2GrpcService
from deployments.ingress.registry import ModelRegistry
from deployments.ingress.request import Target
from deployments.metrics import IngressMetrics
from deployments.pipeline_plan import Plan
from deployments.signature import ModelMetadata
from deployments.user_code import CodePaths, Watchdog, load_processors
from deployments.versions import Routing


class IngressSettings(BaseModel):
    """The Preprocessor's ``user_config``: retuned live, without restarts."""

    model_config = ConfigDict(extra="forbid")

    coalesce: CoalesceSettings = CoalesceSettings()
    models: dict[str, Routing] = Field(
        default_factory=dict, description="per model: labels and the canary split")
    payload_logging: dict[str, PayloadLogArgs] = Field(
        default_factory=dict, description="per model: sampled requests and answers logged "
                                          "(docs/payload_logging.md)")
    served: list[str] | None = Field(
        None, min_length=1, description="unset: the app's own models. Set (by ray-tf-serve): "
        "exactly these models, in order (the first is the default), each the deployment "
        "named after it in its own application (deployments.config.model_app); models come "
        "and go live")


@serve.deployment(name="Preprocessor", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Preprocessor(V2GrpcService, TFServingGrpcService, HealthGrpcService):
    def __init__(self, models: dict[str, DeploymentHandle], top_k: int,
                 limits: InputLimits, code: dict[str, CodePaths] | None = None,
                 pipelines: tuple[Plan, ...] = (), auth: AuthArgs | None = None,
                 cors: CorsArgs | None = None, monitoring: MonitoringArgs | None = None
                 ) -> None:
        """``code``: the models' own pre/postprocessing callables by import
        path, imported here so that one that does not import fails the deploy
        (the message, naming model and path, shows in ``serve status``);
        ``pipelines``: served as models, each step on its model's deployment;
        ``auth``: the tokens read here (none readable fails the deploy, naming
        the variable or file), asked of HTTP and gRPC callers; ``cors``: for
        browsers; ``monitoring``: TF Serving's monitoring page, the whole
        server's metrics read from every node's Ray metrics port."""
        self._gate = Gate(auth or AuthArgs())
        processors = load_processors(code or {})
        self._watchdog = Watchdog([p for ps in processors.values() for p in ps.loaded()],
                                  limits.request_timeout_s)
        self._processors = processors
        self._metrics = IngressMetrics([*models, *(p.name for p in pipelines)])
        clients = {name: RayModelClient(name, handle) for name, handle in models.items()}
        registry = ModelRegistry(clients, self._metrics, processors=processors,
                                 pipelines=pipelines)
        self._payload_logs = PayloadLogs()
        self._plane = DataPlane(registry, limits, self._payload_logs)
        self._limits = limits
        self._settings = IngressSettings()
        self._native = NativeApi(self._plane, limits, top_k)
        prometheus = (monitoring or MonitoringArgs()).prometheus
        page = (MonitoringPage(prometheus.path, ray_nodes(),
                               serve.get_replica_context().app_name)
                if prometheus.enable else None)
        self._asgi = build_asgi(self._plane, limits, self._metrics, top_k, self._gate, cors,
                                page)
        Image.preinit()  # load Pillow's common decoders now, not in the first request

    def __serve_build_asgi_app__(self) -> Starlette:
        return self._asgi

    def check_health(self) -> None:
        """Serve asks every few seconds: fails once every thread of a model's
        own sync code is held by a call that hung, so Serve replaces this
        replica (``deployments.user_code.Watchdog``)."""
        self._watchdog.check()

    async def reconfigure(self, user_config: dict) -> None:
        """Retune coalescing, move labels and the traffic split, payload
        logging, and (``served``) the models served, live (Serve calls this on
        deploy and redeploy; no replica restarts). A coroutine, so Serve runs
        it on the replica's event loop, not a thread: a new model's handle
        makes its router there (with RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0,
        in a thread it raises "No event loop running", which fails the
        reconfigure and stops the replica)."""
        settings = IngressSettings.model_validate(user_config)
        if settings.served is not None and settings.served != self._plane.registry.names:
            self._serve(settings.served)
        registry = self._plane.registry
        registry.route(settings.models)
        registry.retune(settings.coalesce)
        self._payload_logs.configure(settings.payload_logging)
        self._settings = settings

    def _serve(self, names: list[str]) -> None:
        """Serves exactly ``names``, each reached in its own application
        (``IngressSettings.served``): a new registry, swapped in whole, so a
        request already resolved finishes on the old one's objects; a model
        kept gets a new catalog and dispatcher (its versions are asked again).
        The handles are made as ``serve.get_deployment_handle(...,
        _check_exists=False)`` makes them: no round trip to the controller
        here, and calls to a deployment still starting wait for it."""
        clients = {name: RayModelClient(name, DeploymentHandle(name, model_app(name)))
                   for name in names}
        processors = {n: p for n, p in self._processors.items() if n in clients}
        registry = ModelRegistry(clients, self._metrics, processors=processors)
        self._metrics.serving(names)
        self._plane.serve(registry)

    def __del__(self) -> None:
        """Serve calls this on a graceful stop, once requests have drained:
        payload log records still queued are written within a bound."""
        logs = getattr(self, "_payload_logs", None)
        if logs is not None:
            logs.close()

    def stats(self) -> dict[str, Any]:
        """This replica's coalescing settings and, per model and version, the
        model calls it formed; per logged model, its payload log's records
        (offered, written, dropped by reason)."""
        return {"pid": os.getpid(), "coalesce": self._settings.coalesce.model_dump(),
                "models": self._plane.registry.stats(),
                "payload_log": {name: asdict(c) for name, c in self._payload_logs.counts().items()}}

    async def predict(
        self, inputs: np.ndarray | dict[str, np.ndarray | ObjectRef],
        top_k: int | str | None = None, scores: bool | str = False,
        model: str | None = None, version: int | str | None = None,
        signature_name: str | None = None,
    ) -> dict[str, Any]:
        """The Python handle API (inside Ray's trust boundary: no token): a
        batch in the model's input shape (default: the first configured
        model, its highest version, the signature its config names) → the
        top classes per row. Ray resolves an ``ObjectRef``
        passed as ``inputs`` itself; one passed by input name (``{"image":
        ref}``) reaches the app unresolved, is checked in place and forwarded
        to the model replica uncopied."""
        with self._metrics.handle_call(model), self._plane.budget.request():
            if isinstance(inputs, np.ndarray):  # sent by value: held here while it runs
                self._plane.budget.take(inputs.nbytes, "the input array")
            return await self._native.predict(inputs, top_k, scores, model, version,
                                              signature_name)

    async def metadata(self, model: str | None = None,
                       version: int | str | None = None) -> ModelMetadata:
        """The Python handle API: a model's signature, labels and input kind."""
        return await self._plane.resolve(Target(model, version))
