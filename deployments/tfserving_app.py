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
its ``user_config``'s ``served`` list, which Serve applies live
(``Preprocessor.reconfigure``).
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from deployments.app import deployment_of
from deployments.config import AppArgs, model_app
from deployments.ingress.deployment import Preprocessor
from deployments.model_files import locate
from deployments.replica.deployment import ModelDeployment


def build_ingress(args: dict[str, Any]) -> Application:
    """The ingress application: ``args`` as AppArgs (its models: those served
    at start, each reached in its own application, as the Preprocessor's
    ``served`` setting reaches the models added later)."""
    config = AppArgs.model_validate(args)
    models: dict[str, DeploymentHandle] = {
        m.name: DeploymentHandle(m.name, model_app(m.name)) for m in config.models}
    return deployment_of(Preprocessor).bind(models, config.top_k, config.limits, None, (),
                                          config.auth, config.cors, config.monitoring)


def build_model(args: dict[str, Any]) -> Application:
    """One model's application: ``args`` as AppArgs with that one model."""
    config = locate(AppArgs.model_validate(args))
    (model,) = config.models
    return deployment_of(ModelDeployment).options(name=model.name).bind(
        model, config.device, None, (), config.limits)
