"""``build_app``: the YAML's ``args`` → the bound deployment graph.

``serve run configs/config.yaml`` calls :func:`build_app` with the
application's ``args``. Each model becomes its own deployment, named after
the model, so the YAML's ``deployments`` section sets its replicas,
autoscaling, resources and batching by that name; pipelines run on those
deployments (each model's replicas import the transforms of its steps). A model with ``ship: true``
is packed into the object store here, once (see ``deployments.shipping``).
Validating ``args`` touches no file system; what the models name on disk is
checked after it, and local paths made absolute (``deployments.model_files``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from ray.serve import Application, Deployment

from deployments.config import AppArgs
from deployments.ingress.deployment import Preprocessor
from deployments.model_files import locate, shipped_files
from deployments.pipeline_plan import Plan
from deployments.replica.deployment import ModelDeployment
from deployments.shipping import ship
from deployments.user_code import code_paths


def build_app(args: dict[str, Any]) -> Application:
    config = AppArgs.model_validate(args)
    labels: dict[str, Any] = {}
    if config.model_config_file is not None:  # TF Serving's file, read now (not re-read)
        from deployments.tfserving_config import model_args, read_model_config

        entries = read_model_config(config.model_config_file)
        config = AppArgs.model_validate({**args, "model_config_file": None,
                                         "models": [model_args(e) for e in entries]})
        labels = {e.name: {"labels": e.labels} for e in entries if e.labels}
    config = locate(config)
    transforms = config.transforms()
    models = {}
    for model in config.models:
        shipped = ship(Path(model.path), shipped_files(model)) if model.ship else None
        models[model.name] = deployment_of(ModelDeployment).options(name=model.name).bind(
            model, config.device, shipped, transforms.get(model.name, ()), config.limits)
    pipelines = tuple(Plan.from_args(p) for p in config.pipelines)
    code = code_paths([*config.models, *config.pipelines])
    ingress = deployment_of(Preprocessor)
    if labels:  # the YAML's Preprocessor user_config, when it sets one, wins
        ingress = ingress.options(user_config={"models": labels})
    return ingress.bind(models, config.top_k, config.limits, code, pipelines, config.auth,
                        config.cors, config.monitoring)


def deployment_of(decorated: type) -> Deployment:
    """A class ``@serve.deployment`` made a Deployment (mypy does not apply
    class decorators, so it still sees the class)."""
    return cast(Deployment, decorated)
