"""A closed-loop HTTP load generator: N clients, each sending its next request
when the last one answered. One asyncio process, aiohttp (lighter per request
than httpx, so the client steals less CPU from the server on a small machine)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import numpy as np
from tqdm import tqdm

RequestFactory = Callable[[], tuple[bytes | aiohttp.FormData, dict[str, str]]]


@dataclass
class LoadResult:
    clients: int
    seconds: float
    requests: int = 0
    images: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        return {
            "clients": self.clients,
            "requests": self.requests,
            "images_per_s": self.images / self.seconds,
            "requests_per_s": self.requests / self.seconds,
            "p50_ms": float(np.percentile(lat, 50)),
            "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)),
            "errors": self.errors,
        }


async def _run(url: str, make: RequestFactory, images_per_request: int, clients: int,
               seconds: float, warmup_s: float, label: str) -> LoadResult:
    result = LoadResult(clients, seconds)
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop_at = measure_from + seconds
        bar = tqdm(total=round(warmup_s + seconds), desc=label, unit="s", leave=False)

        async def client() -> None:
            while (now := time.perf_counter()) < stop_at:
                body, headers = make()
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    done = time.perf_counter()
                if now >= measure_from:
                    if r.status == 200:
                        result.requests += 1
                        result.images += images_per_request
                        result.latencies_ms.append(1000 * (done - now))
                    else:
                        result.errors[r.status] = result.errors.get(r.status, 0) + 1

        async def ticker() -> None:
            while time.perf_counter() < stop_at:
                await asyncio.sleep(1)
                bar.update(1)

        await asyncio.gather(ticker(), *(client() for _ in range(clients)))
        bar.close()
    return result


def run_load(url: str, make: RequestFactory, images_per_request: int, clients: int,
             seconds: float, warmup_s: float = 2.0, label: str = "load") -> dict:
    result = asyncio.run(_run(url, make, images_per_request, clients, seconds, warmup_s, label))
    return result.summary()


def single_request_ms(url: str, body: bytes, headers: dict[str, str]) -> float:
    """Latency of one request on a fresh connection (e.g. the first after start)."""

    async def once() -> float:
        async with aiohttp.ClientSession() as session:
            start = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                r.raise_for_status()
            return 1000 * (time.perf_counter() - start)

    return asyncio.run(once())
