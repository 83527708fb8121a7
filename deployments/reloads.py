"""TF Serving's ``ModelService.HandleReloadConfigRequest``, carried from the
ingress (which answers the RPC) to ``ray-tf-serve``'s own process (which
alone deploys: ``deployments.tfserving_server``).

That process owns a named actor, :class:`Reloads`; the ingress hands it the
request's ``ModelServerConfig``, serialized, and waits for the answer. The
process takes the configs in turn, applies each as it applies a changed
``--model_config_file``, and answers with a gRPC status code and message.
The actor dies with the process; an app run from a YAML has none, and the
RPC is refused there (its models are the YAML's).
"""

from __future__ import annotations

import asyncio
import itertools

import ray

NAME = "ray-tf-serve-reloads"
NAMESPACE = "serve"

# (gRPC status code name, message)
Status = tuple[str, str]


@ray.remote(num_cpus=0)
class Reloads:
    """Reload requests waiting for the server, and the server's answers."""

    def __init__(self) -> None:
        self._waiting: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self._answers: dict[int, asyncio.Future[Status]] = {}
        self._keys = itertools.count()

    async def reload(self, config: bytes) -> Status:
        """The ingress's call: waits until the server has applied ``config``
        (a serialized ``ModelServerConfig``) or refused it."""
        key = next(self._keys)
        answer = self._answers[key] = asyncio.get_running_loop().create_future()
        self._waiting.put_nowait((key, config))
        try:
            return await answer
        finally:
            del self._answers[key]

    async def next(self, wait_s: float) -> tuple[int, bytes] | None:
        """The server's call: the next config to apply, or None after ``wait_s``."""
        try:
            return await asyncio.wait_for(self._waiting.get(), wait_s)
        except TimeoutError:
            return None

    def answer(self, key: int, status: Status) -> None:
        """The server's call: how applying config ``key`` ended."""
        future = self._answers.get(key)
        if future is not None and not future.done():
            future.set_result(status)


async def request_reload(config: bytes) -> Status | None:
    """The server's answer to ``config``; None when no ``ray-tf-serve``
    process owns the actor (the app was deployed from a YAML)."""
    if not ray.is_initialized():  # the ingress in process, without Ray
        return None
    try:
        actor = await asyncio.to_thread(ray.get_actor, NAME, namespace=NAMESPACE)
    except ValueError:
        return None
    try:
        status: Status = await actor.reload.remote(config)
    except ray.exceptions.RayActorError:
        return "UNAVAILABLE", "ray-tf-serve stopped before it answered the reload"
    return status
