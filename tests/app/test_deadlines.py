"""A request's deadline, from arrival to answer, on every protocol in process:
the client's (``x-request-timeout-seconds``, as an HTTP header or gRPC
metadata) or the config's ``request_timeout_s``, whichever is shorter, bounds
the body read and the wait for a decode thread too, and a request past it
never reaches its model."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from starlette.testclient import TestClient
from tensorflow_serving.apis import predict_pb2

import deployments.ingress.dataplane as dataplane_module
from deployments.errors import ServeError
from deployments.ingress.asgi import build_asgi
from deployments.ingress.dataplane import DataPlane
from deployments.ingress.registry import ModelRegistry
from deployments.metrics import IngressMetrics
from harness.inprocess import InProcessModel
from tests.app.conftest import config_args
from tests.app.test_tfserving_grpc import Context, Service
from tests.common import SAMPLES

DEADLINE_S = 0.3
SHORT = {"x-request-timeout-seconds": str(DEADLINE_S)}
IMAGE = SAMPLES[0].read_bytes()


@dataclass
class App:
    http: TestClient
    models: dict[str, InProcessModel]
    service: Service


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    """The shipped config's models in process, images decoded by one thread."""
    args = config_args(limits={"decode_threads": 1})
    metrics = IngressMetrics([m.name for m in args.models])
    models = {m.name: InProcessModel(m) for m in args.models}
    plane = DataPlane(ModelRegistry(models, metrics), args.limits)
    with TestClient(build_asgi(plane, args.limits, metrics, args.top_k)) as http:
        yield App(http, models, Service(plane, args, metrics))


@pytest.mark.parametrize("path", ["/predict", "/v1/models/digits_linear:predict",
                                  "/v2/models/digits_linear/infer"])
def test_a_body_slower_than_the_deadline_is_a_503_at_the_deadline(app: App, path: str):
    """The body would take 2 s to arrive: the answer comes at the deadline."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("client", 1),
             "server": ("app", 80), "headers": [(b"content-type", b"application/json"),
                                                (b"x-request-timeout-seconds", b"0.3")]}

    async def trickle() -> tuple[float, list[dict[str, Any]]]:
        chunks = 40

        async def receive() -> dict[str, Any]:
            nonlocal chunks
            await asyncio.sleep(0.05)  # the client's pace
            chunks -= 1
            return {"type": "http.request", "body": b" ", "more_body": chunks > 0}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        started = time.monotonic()
        await app.http.app(scope, receive, send)
        return time.monotonic() - started, sent

    elapsed, (start, body) = app.http.portal.call(trickle)
    assert start["status"] == 503
    assert json.loads(body["body"]) == {
        "error": "the request was not answered within 0.3 s (its deadline); retry"}
    assert DEADLINE_S <= elapsed < 1.5


@dataclass
class Held:
    """A first request holding the one decode thread until released."""

    release: threading.Event
    thread: threading.Thread
    answer: dict[str, Any]

    def finish(self) -> Any:
        """Its answer, once it may go on."""
        self.release.set()
        self.thread.join(10)
        return self.answer["response"]


@pytest.fixture
def held(app: App, monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    holding, release = threading.Event(), threading.Event()
    decode = dataplane_module.decode_images

    def hold_the_first(*args: Any) -> np.ndarray:
        if not holding.is_set():
            holding.set()
            release.wait(5)
        return decode(*args)

    monkeypatch.setattr(dataplane_module, "decode_images", hold_the_first)
    for model in app.models.values():
        model.calls.clear()
    answer: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: answer.update(response=app.http.post(
        "/predict", content=IMAGE, headers={"content-type": "image/png"})))
    thread.start()
    assert holding.wait(5)
    held = Held(release, thread, answer)
    yield held
    held.finish()


def test_waiting_for_a_decode_thread_counts(app: App, held: Held):
    started = time.monotonic()
    late = app.http.post("/predict", content=IMAGE,
                         headers={"content-type": "image/png", **SHORT})
    elapsed = time.monotonic() - started
    assert late.status_code == 503, late.text
    assert late.json() == {
        "error": "the request was not answered within 0.3 s (its deadline); retry"}
    assert DEADLINE_S <= elapsed < 1.5
    assert held.finish().status_code == 200
    assert app.models["digits"].calls == [1]  # the first request's; the late one never went


def test_a_grpc_call_is_bounded_by_the_clients_deadline(app: App, held: Held):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["image"].CopyFrom(tf.make_tensor_proto([IMAGE]))
    context = Context(metadata=tuple(SHORT.items()))
    started = time.monotonic()
    with pytest.raises(ServeError):
        app.http.portal.call(app.service.Predict, request, context)
    elapsed = time.monotonic() - started
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert context.details == "the request was not answered within 0.3 s (its deadline); retry"
    assert DEADLINE_S <= elapsed < 1.5
    assert held.finish().status_code == 200
    assert app.models["digits"].calls == [1]
