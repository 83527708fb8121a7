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
    errors: dict[int | str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    done_at_s: list[float] = field(default_factory=list)  # since the run's start

    def record(self, started: float, done: float, origin: float, images: int) -> None:
        self.requests += 1
        self.images += images
        self.latencies_ms.append(1000 * (done - started))
        self.done_at_s.append(done - origin)

    def error(self, kind: int | str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

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
               seconds: float, warmup_s: float, label: str, method: str) -> LoadResult:
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
                async with session.request(method, url, data=body, headers=headers) as r:
                    await r.read()
                    done = time.perf_counter()
                if now >= measure_from:
                    if r.status == 200:
                        result.record(now, done, start, images_per_request)
                    else:
                        result.error(r.status)

        async def ticker() -> None:
            while time.perf_counter() < stop_at:
                await asyncio.sleep(1)
                bar.update(1)

        await asyncio.gather(ticker(), *(client() for _ in range(clients)))
        bar.close()
    return result


def run_load(url: str, make: RequestFactory, images_per_request: int, clients: int,
             seconds: float, warmup_s: float = 2.0, label: str = "load",
             method: str = "POST") -> dict:
    result = asyncio.run(_run(url, make, images_per_request, clients, seconds, warmup_s, label,
                              method))
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


Phases = list[tuple[int, float]]  # (clients, seconds), one after another


async def _run_phases(url: str, make: RequestFactory, phases: Phases,
                      label: str) -> LoadResult:
    """Closed-loop load whose client count steps through ``phases``."""
    total = sum(seconds for _, seconds in phases)
    result = LoadResult(max(c for c, _ in phases), total)
    bounds, elapsed = [], 0.0
    for clients, seconds in phases:
        elapsed += seconds
        bounds.append((elapsed, clients))
    connector = aiohttp.TCPConnector(limit=result.clients)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        start = time.perf_counter()
        bar = tqdm(total=round(total), desc=label, unit="s", leave=False)

        def active(now: float) -> int:
            return next((c for end, c in bounds if now - start < end), 0)

        async def client(k: int) -> None:
            while (now := time.perf_counter()) < start + total:
                if k >= active(now):
                    await asyncio.sleep(0.1)
                    continue
                body, headers = make()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                except aiohttp.ClientError as exc:
                    result.error(type(exc).__name__)
                    continue
                if r.status == 200:
                    result.record(now, time.perf_counter(), start, 1)
                else:
                    result.error(r.status)

        async def ticker() -> None:
            while time.perf_counter() < start + total:
                await asyncio.sleep(1)
                bar.update(1)

        await asyncio.gather(ticker(), *(client(k) for k in range(result.clients)))
        bar.close()
    return result


def run_phases(url: str, make: RequestFactory, phases: Phases, label: str) -> LoadResult:
    return asyncio.run(_run_phases(url, make, phases, label))
