"""The app's models by name: each one's version catalog, its dispatcher and
its own pre/postprocessing code. Pipelines are served as models too."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from deployments.errors import NotFound, clip
from deployments.ingress.catalog import MetadataSource, VersionCatalog
from deployments.ingress.coalescing import CoalesceSettings
from deployments.ingress.dispatch import Dispatcher, ModelCaller
from deployments.ingress.pipeline_client import PipelineClient, StageClient
from deployments.metrics import IngressMetrics
from deployments.pipeline_plan import Plan
from deployments.user_code import Processors
from deployments.versions import Routing


class ModelClient(MetadataSource, ModelCaller, Protocol):
    """How the ingress reaches one model's replicas (Ray's: ``model_client.py``;
    a pipeline's: ``PipelineClient``)."""


class DeploymentClient(ModelClient, StageClient, Protocol):
    """A model deployment's client, through which pipelines run their steps too."""


@dataclass(frozen=True)
class ServedModel:
    """One served model as the ingress holds it."""

    name: str
    catalog: VersionCatalog
    dispatcher: Dispatcher
    processors: Processors


class ModelRegistry:
    """The served models in config order; the first is the default."""

    def __init__(self, clients: Mapping[str, DeploymentClient], metrics: IngressMetrics,
                 routing: Mapping[str, Routing] | None = None,
                 processors: Mapping[str, Processors] | None = None,
                 pipelines: Sequence[Plan] = ()) -> None:
        """``processors``: each model's (or pipeline's) own pre/postprocessing
        code (none if left out); ``pipelines``: served as models, after them."""
        processors = processors or {}
        if unknown := sorted(set(processors) - {*clients, *(p.name for p in pipelines)}):
            raise ValueError(f"code given for models that are not served: {unknown}")

        def served(name: str, client: ModelClient) -> ServedModel:
            dispatcher = Dispatcher(name, client, metrics)
            return ServedModel(name, VersionCatalog(name, client, dispatcher.prune), dispatcher,
                               processors.get(name, Processors()))

        self._models = {name: served(name, client) for name, client in clients.items()}
        catalogs = {name: model.catalog for name, model in self._models.items()}
        for plan in pipelines:  # reaching its models as clients, composing their metadata
            self._models[plan.name] = served(plan.name, PipelineClient(plan, clients, catalogs))
        self.route(routing or {})
        self.default = next(iter(self._models))

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str | None = None) -> ServedModel:
        """A model by name (default: the first configured), or a 404."""
        model = self._models.get(self.default if name is None else name)
        if model is None:
            raise NotFound(f"Servable not found for request: Latest({clip(str(name))}): "
                           f"no model named {clip(str(name))!r} (served: "
                           f"{', '.join(self._models)})")
        return model

    def retune(self, settings: CoalesceSettings) -> None:
        for model in self._models.values():
            model.dispatcher.retune(settings)

    def route(self, routing: Mapping[str, Routing]) -> None:
        """New labels and traffic splits, by model (a model left out has none)."""
        if unknown := sorted(set(routing) - set(self._models)):
            raise ValueError(f"labels given for models that are not served: {unknown}")
        for name, model in self._models.items():
            model.catalog.routing = routing.get(name, Routing())

    def stats(self) -> dict[str, Any]:
        """Per model and version, the calls that coalescing formed."""
        for model in self._models.values():
            model.dispatcher.prune(model.catalog.known)
        return {name: model.dispatcher.stats() for name, model in self._models.items()}
