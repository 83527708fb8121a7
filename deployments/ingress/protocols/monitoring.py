"""TF Serving's monitoring page (``monitoring.prometheus``): ``GET <path>``
answers the whole server's metrics as Prometheus text, under TF Serving's
names beside ours (``deployments.tfserving_metrics``).

Every replica's figures are on its node's Ray metrics port, not in this
replica: a scrape reads every live node's page (concurrently, each within
``timeout_s``) and translates them. One reading serves every scrape for
``ttl_s`` (concurrent scrapes wait for the same one), so a flood of scrapes
costs one reading a second. A node that does not answer is left out, logged,
and counted in ``ray_tfserve_monitoring_nodes{state="unreachable"}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
import ray
from starlette.requests import Request
from starlette.responses import Response

from deployments.ingress.protocols.routes import ApiRoute
from deployments.tfserving_metrics import translate

logger = logging.getLogger("ray.serve")

# Every node's page as text, and how many nodes did not answer.
Pages = tuple[list[str], int]
Reader = Callable[[], Awaitable[Pages]]

TTL_S = 1.0
TIMEOUT_S = 3.0


def _node_urls() -> list[str]:
    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")]


def ray_nodes(timeout_s: float = TIMEOUT_S) -> Reader:
    """Reads every live node's Ray metrics page (the node list from the GCS,
    off the event loop)."""

    async def read() -> Pages:
        urls = await asyncio.to_thread(_node_urls)
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def page(url: str) -> str | None:
                try:
                    async with session.get(url) as response:
                        response.raise_for_status()
                        return await response.text()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    logger.warning("monitoring: %s did not answer: %r", url, exc)
                    return None

            pages = await asyncio.gather(*(page(u) for u in urls))
        texts = [p for p in pages if p is not None]
        return texts, len(pages) - len(texts)

    return read


def _nodes_gauge(answered: int, unreachable: int) -> str:
    name = "ray_tfserve_monitoring_nodes"
    return (f"# HELP {name} Nodes whose metrics this page holds, and those that did not "
            f"answer.\n# TYPE {name} gauge\n"
            f'{name}{{state="answered"}} {answered}\n'
            f'{name}{{state="unreachable"}} {unreachable}\n')


class MonitoringPage:
    """The page at ``path``: application ``app``'s metrics, read with ``read``."""

    def __init__(self, path: str, read: Reader, app: str | None, ttl_s: float = TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._read = read
        self._app = app
        self._ttl_s = ttl_s
        self._clock = clock
        self._page: tuple[float, str] | None = None
        self._lock = asyncio.Lock()

    async def text(self) -> str:
        """The page, read anew at most once every ``ttl_s``."""
        async with self._lock:
            if self._page is None or self._clock() - self._page[0] >= self._ttl_s:
                texts, unreachable = await self._read()
                page = await asyncio.to_thread(translate, texts, self._app)
                self._page = (self._clock(), page + _nodes_gauge(len(texts), unreachable))
            return self._page[1]

    async def endpoint(self, request: Request) -> Response:
        # TF Serving answers ``Content-Type: text/plain``.
        return Response(await self.text(), media_type="text/plain")

    def routes(self) -> list[ApiRoute]:
        return [ApiRoute(self.path, self.endpoint, "GET", "monitoring.prometheus", "other")]
