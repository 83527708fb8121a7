"""``build_app``: the YAML's ``args`` → the bound deployment graph.

``serve run configs/config.yaml`` calls :func:`build_app` with the
application's ``args``; replica counts, autoscaling, resources and batching
come from the YAML's ``deployments`` section, which Serve applies on top.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.config import AppArgs
from deployments.ingress import Preprocessor
from deployments.model import ModelDeployment


def build_app(args: dict[str, Any]) -> Application:
    config = AppArgs.model_validate(args)
    model = ModelDeployment.bind(config.model.resolved(), config.device)
    return Preprocessor.bind(model, config.top_k, config.limits)
