"""The app's HTTP side as a plain value: :func:`build_asgi` turns the data
plane into a Starlette app with every route, codec, limit, error and the
auth gate. The Preprocessor deployment serves it; the tests drive it
in-process, no Ray."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from deployments.config import AuthArgs, CorsArgs, InputLimits
from deployments.errors import ServeError
from deployments.ingress.auth import Gate
from deployments.ingress.dataplane import DataPlane
from deployments.ingress.openapi import openapi_document
from deployments.ingress.protocols import ui
from deployments.ingress.protocols.http import deadlines, render_error
from deployments.ingress.protocols.monitoring import MonitoringPage
from deployments.ingress.protocols.native import NativeApi
from deployments.ingress.protocols.routes import ApiRoute
from deployments.ingress.protocols.tfserving import TFServingApi
from deployments.ingress.protocols.v2 import V2Api
from deployments.metrics import IngressMetrics


def api_routes(plane: DataPlane, limits: InputLimits, top_k: int,
               auth: AuthArgs | None = None) -> list[ApiRoute]:
    """The API's routing table, in matching order: health, the three
    protocols, and the OpenAPI document made from this same table (with
    ``auth``'s security scheme). (Making the table asks nothing of the
    registry yet.)"""

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> JSONResponse:
        """Ready while every model has a replica that answers now (not just once)."""
        metas = await plane.ready()
        return JSONResponse({"status": "ready", "models": [m.name for m in metas]})

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(openapi_document(routes, plane.registry.names, auth))

    routes = [
        ApiRoute("/healthz", healthz, "GET", "healthz", "other"),
        ApiRoute("/readyz", readyz, "GET", "readyz", "other"),
        ApiRoute("/openapi.json", openapi, "GET", "openapi", "other"),
        *NativeApi(plane, limits, top_k).routes(),
        *TFServingApi(plane, limits).routes(),
        *V2Api(plane, limits).routes(),
    ]
    return routes


def build_asgi(plane: DataPlane, limits: InputLimits, metrics: IngressMetrics,
               top_k: int, gate: Gate | None = None, cors: CorsArgs | None = None,
               monitoring: MonitoringPage | None = None) -> Starlette:
    """The app: the API's routes, TF Serving's monitoring page if
    ``monitoring`` (behind the gate like the API, out of the OpenAPI
    document), and the demo page, every error rendered as JSON, every request
    counted (401s too) and bounded by its deadline, behind ``gate`` (none:
    open), and CORS answered first (preflights need no token) when ``cors``
    lists origins."""
    gate = gate or Gate(AuthArgs())
    routes: list[BaseRoute] = [*api_routes(plane, limits, top_k, gate.args),
                               *(monitoring.routes() if monitoring else []), *ui.routes()]
    handlers = {ServeError: render_error, HTTPException: render_error, Exception: render_error}
    middleware = [Middleware(metrics.asgi), Middleware(gate.asgi),
                  Middleware(plane.budget.asgi), Middleware(deadlines, limits=limits)]
    if cors is not None and cors.allow_origins:
        middleware.insert(0, Middleware(CORSMiddleware, **cors.model_dump()))
    return Starlette(routes=routes, exception_handlers=handlers, middleware=middleware)
