"""The app's Prometheus metrics, through ``ray.serve.metrics``.

Ray exports them on each node's metrics port with a ``ray_`` prefix and
Serve's own ``deployment``, ``replica`` and ``application`` tags added.
``deploy/grafana/ray-tf-serve.json`` charts them.

    ray_tfserve_requests_total{model, protocol, status}     ingress
    ray_tfserve_request_seconds{model, protocol}            ingress: arrival → answer, of a
                                                            request about a model that
                                                            succeeded (TF Serving's
                                                            request_latency buckets)
    ray_tfserve_preprocess_seconds{model}                   ingress: arrival → model call starts
    ray_tfserve_inference_seconds{model}                    ingress: model call (put to answer)
    ray_tfserve_coalesced_rows{model}                       ingress: rows per model call
    ray_tfserve_batch_rows{model, version}                  model replica: rows per TF call
    ray_tfserve_batch_seconds{model, version}               model replica: one TF call
    ray_tfserve_queue_length{model, version}                model replica: requests waiting*
    ray_tfserve_pipeline_step_seconds{pipeline, step, phase}  model replica: one call of a
                                                            pipeline step: feed (inputs
                                                            gathered, transform), model
    ray_tfserve_user_code_stuck{stage, callable}            ingress (preprocess,
                                                            postprocess), model replica
                                                            (transform): calls of sync code
                                                            that hung, at each health check
    ray_tfserve_payload_records_written_total{model}        ingress: payload log records
                                                            written (payload_log.py)
    ray_tfserve_payload_records_dropped_total{model, reason}  ingress: payload log records
                                                            dropped (queue_full, sink_error,
                                                            shutdown, encode_error)

Label values are bounded: a model name that is not served counts as
``"unknown"``, so a client cannot grow the series without limit.
(*A request over ``max_batch_size`` waits as several chunks and counts once
per chunk.) Requests that Serve refuses before the ingress runs (its queue
full) are counted by Serve's own metrics, not here.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

# ray.serve.metrics annotates ``tag_keys`` as ``Tuple[str]`` (one key) though it
# takes any number: hence the ``type: ignore[arg-type]`` on the tuples of two or more.
from ray.serve.metrics import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.tfserving_metrics import REQUEST_LATENCY_BUCKETS_S

_SECONDS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

UNKNOWN_MODEL = "unknown"

# The status of a request whose client went away first (as nginx logs it),
# so that client timeouts do not count as server errors.
CLIENT_GONE = 499

# When the request being handled arrived (perf_counter), for the preprocess time.
_arrived: contextvars.ContextVar[float | None] = contextvars.ContextVar("arrived", default=None)
# How long the request that just left :func:`arrival` took, for its count.
_took: contextvars.ContextVar[float | None] = contextvars.ContextVar("took", default=None)


def protocol_of(route: Any) -> str:
    """The protocol of the route a request matched (``None``: no route did)."""
    if route is None:
        return "none"
    return getattr(route, "protocol", "other")  # the demo page's files: "other"


def model_label(name: str | None, served: Collection[str]) -> str:
    """A served model's name, ``""`` for requests about no model, or ``unknown``."""
    if not name:
        return ""
    return name if name in served else UNKNOWN_MODEL


def arrival_time() -> float | None:
    """When the request being handled arrived (``None`` outside a request)."""
    return _arrived.get()


@contextmanager
def arrival() -> Iterator[None]:
    """Marks when the request being handled arrived, for its preprocess time;
    on leaving, keeps how long it took for :meth:`IngressMetrics.count`,
    which every protocol calls right after (in the same context)."""
    started = time.perf_counter()
    token = _arrived.set(started)
    try:
        yield
    finally:
        _arrived.reset(token)
        _took.set(time.perf_counter() - started)


class IngressMetrics:
    """What the ingress counts and times, for every protocol and the handle API."""

    def __init__(self, served: Collection[str]) -> None:
        self._served = list(served)
        self._requests = Counter(
            "tfserve_requests", "Requests by model, protocol and status code.",
            tag_keys=("model", "protocol", "status"))  # type: ignore[arg-type]
        self._preprocess = Histogram(
            "tfserve_preprocess_seconds",
            "From a request's arrival until its model call starts (decoding, checks, "
            "waiting to coalesce).",
            boundaries=list(_SECONDS), tag_keys=("model",))
        self._inference = Histogram(
            "tfserve_inference_seconds",
            "One model call: the put, queueing and batching on the replica, and retries "
            "after a lost replica.",
            boundaries=list(_SECONDS), tag_keys=("model",))
        self._coalesced = Histogram(
            "tfserve_coalesced_rows", "Rows per model call, coalesced from requests.",
            boundaries=list(_ROWS), tag_keys=("model",))
        self._latency = Histogram(
            "tfserve_request_seconds",
            "A request about a model that succeeded, from its arrival to its answer "
            "(TF Serving's request_latency).",
            boundaries=list(REQUEST_LATENCY_BUCKETS_S), tag_keys=("model", "protocol"))  # type: ignore[arg-type]

    def serving(self, served: Collection[str]) -> None:
        """The models served now, in order (the first is the default): the
        others' requests count as ``unknown``."""
        self._served = list(served)

    def count(self, name: str | None, protocol: str, status: int | str) -> None:
        """One request about model ``name`` (``None``: the default model); if
        it succeeded, how long it took too (as :func:`arrival` left it)."""
        model = model_label(self._served[0] if name is None else name, self._served)
        self._requests.inc(tags={"model": model, "protocol": protocol, "status": str(status)})
        took = _took.get()
        if took is not None:
            _took.set(None)  # one request's time counts once
            if model and status in (200, "OK"):
                self._latency.observe(took, tags={"model": model, "protocol": protocol})

    @contextmanager
    def handle_call(self, name: str | None) -> Iterator[None]:
        """Times a Python handle call and counts it by the HTTP status it
        would have had."""
        status = 500
        try:
            with arrival():
                yield
            status = 200
        except asyncio.CancelledError:
            status = CLIENT_GONE
            raise
        except Exception as exc:
            status = getattr(exc, "status", 500)
            raise
        finally:
            self.count(name, "handle", status)

    def preprocessed(self, model: str, arrived: float | None) -> None:
        """A request that arrived at ``arrived`` is in a model call that starts now."""
        if arrived is not None:
            self._preprocess.observe(time.perf_counter() - arrived, tags={"model": model})

    def coalesced(self, model: str, rows: int) -> None:
        """One model call of ``rows`` rows, from one or more requests."""
        self._coalesced.observe(rows, tags={"model": model})

    @contextmanager
    def inference(self, model: str) -> Iterator[None]:
        """Times one model call that succeeds (a refused one is not an answer)."""
        started = time.perf_counter()
        yield
        self._inference.observe(time.perf_counter() - started, tags={"model": model})

    def asgi(self, app: ASGIApp) -> ASGIApp:
        """``app`` with every HTTP request counted by model, protocol and status
        (as Starlette middleware: unhandled errors pass it as a 500)."""

        async def metered(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            status = 500  # unless a response starts

            async def watch(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                with arrival():
                    await app(scope, receive, watch)
            except asyncio.CancelledError:  # the client went away
                status = CLIENT_GONE
                raise
            finally:
                # Starlette's router records the matched route in the scope.
                route: Any = scope.get("route")
                # /predict is about the default model (None); other routes
                # without a model name are about no model ("").
                unnamed = None if getattr(route, "path", None) == "/predict" else ""
                name = scope.get("path_params", {}).get("name", unnamed)
                self.count(name, protocol_of(route), status)

        return metered


class ModelMetrics:
    """What a model replica records per version: batch sizes, TF time, queue."""

    def __init__(self, model: str, version: int) -> None:
        tags = {"model": model, "version": str(version)}
        self._rows = Histogram("tfserve_batch_rows", "Rows per TensorFlow call.",
                               boundaries=list(_ROWS),
                               tag_keys=("model", "version"))  # type: ignore[arg-type]
        self._seconds = Histogram("tfserve_batch_seconds", "One TensorFlow call.",
                                  boundaries=list(_SECONDS),
                                  tag_keys=("model", "version"))  # type: ignore[arg-type]
        self._queue = Gauge("tfserve_queue_length",
                            "Requests in this replica waiting for a batch.",
                            tag_keys=("model", "version"))  # type: ignore[arg-type]
        for metric in (self._rows, self._seconds, self._queue):
            metric.set_default_tags(dict(tags))  # Serve adds its tags to the dict
        self._queue.set(0)

    def queue_length(self, requests: int) -> None:
        self._queue.set(requests)

    def batch(self, rows: int, seconds: float) -> None:
        self._rows.observe(rows)
        self._seconds.observe(seconds)


class PipelineMetrics:
    """What a model replica records per pipeline step it runs."""

    def __init__(self) -> None:
        self._seconds = Histogram(
            "tfserve_pipeline_step_seconds",
            "One call of a pipeline step on this replica: feed (its inputs gathered and its "
            "transform run) and model (the batch queue and TensorFlow).",
            boundaries=list(_SECONDS),
            tag_keys=("pipeline", "step", "phase"))  # type: ignore[arg-type]

    def step(self, pipeline: str, step: str, feed_s: float, model_s: float) -> None:
        for phase, seconds in (("feed", feed_s), ("model", model_s)):
            self._seconds.observe(seconds, tags={"pipeline": pipeline, "step": step,
                                                 "phase": phase})


class UserCodeMetrics:
    """What a replica's health check finds of its sync user code (``user_code.Watchdog``)."""

    def __init__(self) -> None:
        self._stuck = Gauge(
            "tfserve_user_code_stuck",
            "Calls of a sync preprocess, postprocess or transform callable that have run "
            "past twice the request timeout (hung), by its import path; set at each health "
            "check. All of a callable's threads stuck: the replica fails its health check.",
            tag_keys=("stage", "callable"))  # type: ignore[arg-type]

    def stuck_calls(self, stage: str, path: str, calls: int) -> None:
        self._stuck.set(calls, tags={"stage": stage, "callable": path})


class PayloadLogMetrics:
    """Payload logging in the ingress (``deployments.ingress.payload_log``):

        ray_tfserve_payload_records_written_total{model}        records the sink holds
        ray_tfserve_payload_records_dropped_total{model, reason}  records never written:
                        queue_full (the sink is behind or down), sink_error (a write
                        that failed), shutdown (not flushed in time), encode_error
    """

    def __init__(self) -> None:
        self._written = Counter("tfserve_payload_records_written",
                                "Payload log records written to their sink.",
                                tag_keys=("model",))
        self._dropped = Counter("tfserve_payload_records_dropped",
                                "Payload log records dropped, by reason.",
                                tag_keys=("model", "reason"))  # type: ignore[arg-type]

    def written(self, model: str, records: int) -> None:
        if records:
            self._written.inc(records, tags={"model": model})

    def dropped(self, model: str, reason: str, records: int = 1) -> None:
        if records:
            self._dropped.inc(records, tags={"model": model, "reason": reason})
