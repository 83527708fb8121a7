"""The routing table's one kind of entry: a route that knows its protocol and
its operation name. The metrics middleware reads the protocol off the matched
route (``scope["route"]``) and the OpenAPI document reads the operation by
name, so neither matches paths a second time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Endpoint = Callable[[Request], Awaitable[Response]]


class ApiRoute(Route):
    """``method path`` → ``endpoint``, named ``name`` (the OpenAPI operation,
    ``deployments.ingress.openapi``), counted under ``protocol``."""

    def __init__(self, path: str, endpoint: Endpoint, method: str, name: str,
                 protocol: str) -> None:
        super().__init__(path, endpoint, methods=[method], name=name)
        self.protocol = protocol


def model_routes(prefix: str, suffix: str, endpoint: Endpoint, method: str, name: str,
                 protocol: str, labels: bool = False) -> list[ApiRoute]:
    """``{prefix}/{name}{suffix}`` and its version form,
    ``{prefix}/{name}/versions/{version}{suffix}``, on the same endpoint
    (``labels``: and TF Serving's ``{prefix}/{name}/labels/{label}{suffix}``)."""
    middles = ["", "/versions/{version}", *(["/labels/{label}"] if labels else [])]
    return [ApiRoute(f"{prefix}/{{name}}{middle}{suffix}", endpoint, method, name, protocol)
            for middle in middles]
