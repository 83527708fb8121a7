"""The applications ``ray-tf-serve`` (the CLI, ``deployments.cli``) deploys:
each model in an application of its own (``build_model``) and the ingress
(``build_ingress``), which learns the models it routes to from its
``user_config``.

Why: Serve derives every deployment's version from its application's
``import_path``, ``runtime_env`` and ``args`` (``get_app_code_version`` in
``ray/serve/_private/deploy_utils.py``): a redeploy whose ``args`` differ
restarts every deployment of the application. One application per model
keeps a model's ``args`` (hence its replicas) untouched when another model is
added, removed or changed; the ingress's ``args`` never change during a run
(its first models), and the list of models it serves, with their labels, is
its ``user_config``, which Serve applies live (``reconfigure``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from deployments.app import _deployment
from deployments.config import AppArgs, AuthArgs, CorsArgs, InputLimits
from deployments.ingress.deployment import Preprocessor
from deployments.ingress.model_client import RayModelClient
from deployments.ingress.registry import ModelRegistry
from deployments.model_files import locate
from deployments.replica.deployment import ModelDeployment
from deployments.tfserving_config import SERVED, model_app

if TYPE_CHECKING:
    _Ingress = Preprocessor
else:
    _Ingress = Preprocessor.func_or_class  # the class under @serve.deployment


def _handle(name: str) -> DeploymentHandle:
    return serve.get_deployment_handle(name, app_name=model_app(name), _check_exists=False)


class LivePreprocessor(_Ingress):
    """The Preprocessor, whose served models are its ``user_config``'s
    ``served`` list (in order; the first is the default): a model added is
    reached through its own application's deployment, a model removed is no
    longer routed to, live, and the others keep their state."""

    async def __init__(  # type: ignore[misc]
            self, models: list[str], top_k: int, limits: InputLimits,
            auth: AuthArgs | None = None, cors: CorsArgs | None = None) -> None:
        # Under @serve.ingress the parent's __init__ is a coroutine.
        await super().__init__(  # type: ignore[misc]
            {name: _handle(name) for name in models}, top_k, limits, auth=auth, cors=cors)

    def reconfigure(self, user_config: dict) -> None:
        settings = dict(user_config)
        served = settings.pop(SERVED, None)
        if served and list(served) != self._registry.names:
            self._serve(list(served))
        super().reconfigure(settings)

    def _serve(self, names: list[str]) -> None:
        clients = {name: RayModelClient(name, _handle(name)) for name in names}
        registry = ModelRegistry(clients, self._metrics)
        # Metric labels name the models served now (others count as unknown).
        self._metrics._served = list(names)
        # Requests already resolved finish on the old registry's objects.
        self._registry = self._plane.registry = registry


def build_ingress(args: dict[str, Any]) -> Application:
    """The ingress application: ``args`` as AppArgs (its models: those served at start)."""
    config = AppArgs.model_validate(args)
    live = serve.deployment(name="Preprocessor", max_ongoing_requests=256,
                            ray_actor_options={"num_cpus": 0})(LivePreprocessor)
    return live.bind([m.name for m in config.models], config.top_k, config.limits,
                     config.auth, config.cors)


def build_model(args: dict[str, Any]) -> Application:
    """One model's application: ``args`` as AppArgs with that one model."""
    config = locate(AppArgs.model_validate(args))
    (model,) = config.models
    return _deployment(ModelDeployment).options(name=model.name).bind(
        model, config.device, None, (), config.limits)
