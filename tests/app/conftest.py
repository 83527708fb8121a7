"""The HTTP layer in process: the app's ASGI app (``build_asgi``) on a data plane
whose models run in this process (real TensorFlow, no Ray), driven through
Starlette's test client. Every route, codec, limit and error, in seconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml
from starlette.applications import Starlette
from starlette.testclient import TestClient

from deployments.config import AppArgs
from deployments.ingress.asgi import build_asgi
from deployments.metrics import IngressMetrics
from deployments.versions import Routing
from harness.inprocess import in_process_plane
from tests.common import CONFIG, ROOT


def config_args(**changes: object) -> AppArgs:
    """configs/config.yaml's ``args``, model paths made absolute."""
    (app,) = yaml.safe_load(CONFIG.read_text())["applications"]
    args = app["args"]
    for model in args["models"]:
        model["path"] = str(ROOT / model["path"])
        model["labels_path"] = str(ROOT / model["labels_path"])
    return AppArgs.model_validate({**args, **changes})


def build_app(args: AppArgs, routing: dict[str, Routing] | None = None) -> Starlette:
    """The app the Preprocessor serves for ``args`` (and labels, ``routing``),
    its models and pipelines in this process, with the code they name."""
    metrics = IngressMetrics([m.name for m in (*args.models, *args.pipelines)])
    return build_asgi(in_process_plane(args, metrics, routing), args.limits, metrics,
                      args.top_k)


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    """The shipped config's app on one event loop for the whole session; server
    errors come back as the 500 responses a real client would see."""
    with TestClient(build_app(config_args()), base_url="http://app",
                    raise_server_exceptions=False) as c:
        yield c
