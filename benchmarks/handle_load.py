"""A second Ray job calling the app through a Python handle: N concurrent
callers, closed loop, for a fixed time. Run by the benchmark as a subprocess
joining its cluster; prints one JSON summary line.

``--by-ref`` puts each batch in the object store and passes the reference by
input name (``{"image": ref}``): the app forwards the caller's object to the
model instead of receiving the array. ``--model NAME`` calls that model's own
deployment instead of the app's ``predict``: the caller puts its batch in the
object store and hands over the reference, skipping the Preprocessor;
``--direct`` with it runs the ingress's data plane in this job instead
(``DirectClient``), so its concurrent calls are coalesced here."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import numpy as np
import ray
from ray import serve

from benchmarks.load import LoadResult
from deployments.ingress.direct import DirectClient


def _caller(app_name: str, model: str | None, by_ref: bool, direct: bool,
            batch: np.ndarray) -> Callable[[], Awaitable[object]]:
    if model is not None and direct:
        client = DirectClient.for_app(app_name, [model])
        return lambda: client.predict({"image": batch})
    if model is not None:
        handle = serve.get_deployment_handle(model, app_name).options(_by_reference=True)
        return lambda: handle.remote(ray.put(batch))
    app = serve.get_app_handle(app_name)
    if by_ref:
        return lambda: app.predict.remote({"image": ray.put(batch)}, top_k=1)
    return lambda: app.predict.remote(batch, top_k=1)


async def drive(app_name: str, model: str | None, by_ref: bool, direct: bool, clients: int,
                seconds: float, warmup_s: float, shape: tuple[int, ...]) -> dict:
    batch = np.random.default_rng(0).random(shape, dtype=np.float32)
    call = _caller(app_name, model, by_ref, direct, batch)
    await call()  # the router learns the replicas first
    result = LoadResult(clients, seconds)
    measure_from = time.perf_counter() + warmup_s
    stop_at = measure_from + seconds

    async def client() -> None:
        while (now := time.perf_counter()) < stop_at:
            try:
                await call()
            except Exception as exc:  # counted, like an HTTP error status
                name = type(exc).__name__
                result.errors[name] = result.errors.get(name, 0) + 1
                continue
            if now >= measure_from:
                result.requests += 1
                result.images += shape[0]
                result.latencies_ms.append(1000 * (time.perf_counter() - now))

    await asyncio.gather(*(client() for _ in range(clients)))
    return result.summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", required=True)
    parser.add_argument("--model", help="call this model's deployment, not the app")
    parser.add_argument("--by-ref", action="store_true",
                        help="pass each batch as an ObjectRef by input name")
    parser.add_argument("--direct", action="store_true",
                        help="with --model: through deployments.ingress.direct.DirectClient "
                             "(the data plane in this process: calls coalesced here)")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--shape", type=int, nargs="+", default=[1, 224, 224, 3])
    args = parser.parse_args()
    ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
    if args.direct and args.model is None:
        parser.error("--direct needs --model")
    summary = asyncio.run(drive(args.app, args.model, args.by_ref, args.direct, args.clients,
                                args.seconds, args.warmup, tuple(args.shape)))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
