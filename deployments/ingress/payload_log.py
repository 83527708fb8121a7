"""Payload logging in the ingress: sampled requests and answers, written off
the request's path.

:meth:`PayloadLogs.sample` (as a request starts) draws whether it is logged
(its model's ``sample_rate``, or the caller's ``x-log-payload: 1`` where the
model allows it); :meth:`PayloadLogs.finish` (after its answer or error)
builds the record, keeping each tensor as the model's settings say
(``deployments.codecs.payload``: shapes only by default, values only when
asked and within ``max_record_bytes``) and hands it to the model's bounded
queue. That is all a request pays: no encoding, no I/O, never a wait. A
queue that is full drops the record and counts it.

One thread per logged model drains its queue in batches through its sink:
a directory (files rotated by size and age), object storage through fsspec
(an object per rotation), or an HTTP collector (CloudEvents as KServe's
logger posts them). A write that fails loses its batch (counted); the sink
is then left alone for a backoff (0.5 s doubling to 30 s) while the queue
fills and drops. Every record is either written or counted as dropped, by
reason (``deployments.metrics.PayloadLogMetrics``). :meth:`PayloadLogs.close`
(the Preprocessor's ``__del__``, which Serve calls on a graceful stop once
requests have drained) flushes within a bound and counts what is left.
Settings are retuned live (:meth:`PayloadLogs.configure`): a changed rate or
redaction applies to the next request; a changed sink closes the old one
(flushed in the background) and opens the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np

from deployments.codecs import cloudevents, prediction_log
from deployments.codecs.payload import PayloadRecord, keep_tensors
from deployments.config import PayloadLogArgs, PayloadSinkArgs, is_url
from deployments.errors import ServeError
from deployments.ingress.request import EncodedImages
from deployments.ingress.request_id import current_request, new_request_id
from deployments.metrics import CLIENT_GONE, PayloadLogMetrics
from deployments.signature import ModelMetadata, TensorSpec

logger = logging.getLogger("ray.serve")

FLUSH_TIMEOUT_S = 5.0  # a clean stop waits at most this long for the sinks
IDLE_POLL_S = 0.5  # how often an idle writer looks at its files' age
BACKOFF_S = (0.5, 30.0)  # a failed sink is left alone this long, doubling to the max


class SinkFailed(Exception):
    """A write that failed: ``lost`` records are gone, ``written`` made it."""

    def __init__(self, lost: int, written: int = 0, cause: str = "") -> None:
        super().__init__(f"{lost} records lost: {cause}")
        self.lost, self.written = lost, written


class Sink(Protocol):
    """Where one model's records go. ``write``, ``tick`` and ``close`` return
    how many records are now written (an object store's buffer counts once
    uploaded) or raise :class:`SinkFailed`."""

    def encode(self, record: PayloadRecord) -> Any: ...
    def write(self, items: list[Any]) -> int: ...
    def tick(self) -> int: ...
    def close(self) -> int: ...


def _source(model: str) -> str:
    return f"ray-tf-serve://{socket.gethostname()}/{model}"


class _Files:
    """Files of records named by model, time, host and process, rotated by
    size and age (what the directory and object store sinks share)."""

    def __init__(self, model: str, args: PayloadSinkArgs) -> None:
        self.model, self.args = model, args
        self.suffix = ".tfrecord" if args.format == "prediction_log" else ".jsonl"
        self._seq = 0
        self._source = _source(model)

    def encode(self, record: PayloadRecord) -> bytes:
        if self.args.format == "prediction_log":
            return prediction_log.encode(record)
        return cloudevents.json_line(record, self._source, self.args.namespace)

    def name(self) -> str:
        self._seq += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        return (f"{self.model}-{stamp}-{socket.gethostname()}-{os.getpid()}-"
                f"{self._seq:05d}{self.suffix}")


class DirectorySink(_Files):
    """Appends to a file under ``<url>/<model>/``, flushed per batch; a new
    file past ``rotate_bytes`` or ``rotate_s``."""

    def __init__(self, model: str, args: PayloadSinkArgs) -> None:
        super().__init__(model, args)
        self.directory = Path(args.url) / model
        self._file: BinaryIO | None = None
        self._opened = 0.0
        self._size = 0

    def _due(self) -> bool:
        return self._file is not None and (
            self._size >= self.args.rotate_bytes
            or time.monotonic() - self._opened >= self.args.rotate_s)

    def write(self, items: list[bytes]) -> int:
        try:
            if self._due():
                self.close()
            if self._file is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._file = open(self.directory / self.name(), "ab")  # noqa: SIM115
                self._opened, self._size = time.monotonic(), 0
            data = b"".join(items)
            self._file.write(data)
            self._file.flush()
        except OSError as exc:
            self._drop_file()
            raise SinkFailed(len(items), cause=str(exc)) from exc
        self._size += len(data)
        return len(items)

    def _drop_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def tick(self) -> int:
        if self._due():
            self.close()
        return 0

    def close(self) -> int:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()
        return 0


class ObjectStoreSink(_Files):
    """Buffers a file's records in memory and uploads it as one object under
    ``<url>/<model>/`` once ``rotate_bytes`` or ``rotate_s`` is reached (objects
    are not appended to): a failed upload loses the buffered records."""

    def __init__(self, model: str, args: PayloadSinkArgs,
                 filesystem: Callable[[str], tuple[Any, str]] | None = None) -> None:
        super().__init__(model, args)
        from deployments.storage import open_filesystem

        self._fs, self._base = (filesystem or open_filesystem)(args.url)
        self._buffer: list[bytes] = []
        self._records = 0
        self._size = 0
        self._opened = 0.0

    def write(self, items: list[bytes]) -> int:
        if not self._buffer:
            self._opened = time.monotonic()
        self._buffer.extend(items)
        self._records += len(items)
        self._size += sum(len(i) for i in items)
        return self._upload() if self._size >= self.args.rotate_bytes else 0

    def tick(self) -> int:
        if self._buffer and time.monotonic() - self._opened >= self.args.rotate_s:
            return self._upload()
        return 0

    def close(self) -> int:
        return self._upload() if self._buffer else 0

    def _upload(self) -> int:
        data, records = b"".join(self._buffer), self._records
        self._buffer, self._records, self._size = [], 0, 0
        path = f"{self._base.rstrip('/')}/{self.model}/{self.name()}"
        try:
            self._fs.pipe_file(path, data)
        except Exception as exc:
            raise SinkFailed(records, cause=f"{type(exc).__name__}: {exc}") from exc
        return records


class HttpSink:
    """Posts each record to a collector as KServe's logger does: a request
    and a response CloudEvent in binary mode (``deployments.codecs.cloudevents``),
    over one kept-alive connection; a post that fails or answers an error
    fails the rest of the batch."""

    def __init__(self, model: str, args: PayloadSinkArgs, timeout_s: float = 5.0) -> None:
        import httpx

        self.url, self.args = args.url, args
        self._source = _source(model)
        self._client = httpx.Client(timeout=timeout_s)

    def encode(self, record: PayloadRecord) -> list[tuple[dict[str, str], bytes]]:
        return cloudevents.kserve_events(record, self._source, self.args.namespace)

    def write(self, items: list[list[tuple[dict[str, str], bytes]]]) -> int:
        written = 0
        try:
            for events in items:
                for headers, body in events:
                    self._client.post(self.url, headers=headers, content=body
                                      ).raise_for_status()
                written += 1
        except Exception as exc:
            raise SinkFailed(len(items) - written, written,
                             f"{type(exc).__name__}: {exc}") from exc
        return written

    def tick(self) -> int:
        return 0

    def close(self) -> int:
        self._client.close()
        return 0


def open_sink(model: str, args: PayloadSinkArgs) -> Sink:
    """The sink ``args.url`` names (files' format: ``args.format``)."""
    scheme = args.url.partition("://")[0] if is_url(args.url) else ""
    if scheme in ("http", "https"):
        return HttpSink(model, args)
    if scheme:
        return ObjectStoreSink(model, args)
    return DirectorySink(model, args)


@dataclass
class Pending:
    """A request drawn for logging, until its answer."""

    request_id: str
    time: float
    started: float
    protocol: str
    forced: bool
    sample_rate: float
    inputs: Mapping[str, object] | None = None  # the model's, once decoded


@dataclass
class Counts:
    """One model's records (for tests and the bench; Prometheus has the same)."""

    offered: int = 0
    written: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


class ModelLog:
    """One model's queue, writer thread and sink."""

    def __init__(self, model: str, settings: PayloadLogArgs, metrics: PayloadLogMetrics,
                 sink: Sink | None = None) -> None:
        assert settings.sink is not None
        self.model, self.settings, self._metrics = model, settings, metrics
        self.sink = sink or open_sink(model, settings.sink)
        self.counts = Counts()
        self._queue: queue.Queue[PayloadRecord] = queue.Queue(settings.queue_records)
        self._stop = threading.Event()
        self._deadline = 0.0
        self._retry_at = 0.0
        self._backoff = BACKOFF_S[0]
        self._lock = threading.Lock()  # the counts: the event loop and the writer
        self._thread = threading.Thread(target=self._run, name=f"payload-log-{model}",
                                        daemon=True)
        self._thread.start()

    def offer(self, record: PayloadRecord) -> None:
        """On the request's path: queued, or dropped and counted at once."""
        with self._lock:
            self.counts.offered += 1
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._dropped("queue_full")

    def _dropped(self, reason: str, records: int = 1) -> None:
        if records:
            with self._lock:
                self.counts.dropped[reason] = self.counts.dropped.get(reason, 0) + records
            self._metrics.dropped(self.model, reason, records)

    def _written(self, records: int) -> None:
        if records:
            with self._lock:
                self.counts.written += records
            self._metrics.written(self.model, records)

    def _take(self, wait_s: float) -> list[PayloadRecord]:
        try:
            batch = [self._queue.get(timeout=wait_s) if wait_s > 0 else self._queue.get_nowait()]
        except queue.Empty:
            return []
        while len(batch) < self.settings.batch_records:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[PayloadRecord]) -> None:
        items = []
        for record in batch:
            try:
                items.append(self.sink.encode(record))
            except Exception:
                logger.exception("payload log of %r: a record could not be encoded", self.model)
                self._dropped("encode_error")
        if not items:
            return
        try:
            self._written(self.sink.write(items))
        except Exception as exc:
            self._failed(exc)
        else:
            self._backoff = BACKOFF_S[0]

    def _failed(self, exc: Exception) -> None:
        lost, written = ((exc.lost, exc.written) if isinstance(exc, SinkFailed)
                         else (0, 0))
        self._written(written)
        self._dropped("sink_error", lost)
        logger.warning("payload log of %r: its sink failed (%s); %d records lost, retrying "
                       "in %.1f s", self.model, exc, lost, self._backoff)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_S[1])

    def _run(self) -> None:
        while not self._stop.is_set():
            if (wait := self._retry_at - time.monotonic()) > 0:
                self._stop.wait(wait)  # the sink failed: the queue fills meanwhile
                continue
            batch = self._take(IDLE_POLL_S)
            if batch:
                self._write(batch)
            else:
                try:
                    self._written(self.sink.tick())
                except Exception as exc:
                    self._failed(exc)
        while time.monotonic() < self._deadline and (batch := self._take(0)):
            self._write(batch)  # stopping: a last try, even a sink in backoff
        left = 0
        while batch := self._take(0):
            left += len(batch)
        self._dropped("shutdown", left)
        try:
            self._written(self.sink.close())
        except Exception as exc:
            self._failed(exc)

    def close(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Stops taking records; what is queued is written within ``timeout_s``
        (the rest counted as dropped: ``shutdown``)."""
        self._deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._thread.join(timeout_s + 1.0)

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """Waits until every record offered so far is written or dropped (tests, bench)."""
        until = time.monotonic() + timeout_s
        while time.monotonic() < until:
            with self._lock:
                c = self.counts
                if c.offered == c.written + sum(c.dropped.values()):
                    return True
            time.sleep(0.01)
        return False


def _dtypes(specs: tuple[TensorSpec, ...]) -> dict[str, str]:
    return {s.name: s.dtype for s in specs}


def _as_tensors(inputs: Mapping[str, object]) -> dict[str, object]:
    """Inputs as given (a request that failed before decoding): encoded images
    as a BYTES tensor."""
    return {n: np.array(list(v.blobs), dtype=object) if isinstance(v, EncodedImages) else v
            for n, v in inputs.items()}


def _status(error: BaseException | None) -> tuple[int, str | None]:
    if error is None:
        return 200, None
    if isinstance(error, ServeError):
        return error.status, error.message
    if isinstance(error, asyncio.CancelledError):
        return CLIENT_GONE, "the client went away"
    return 500, "internal server error"


class PayloadLogs:
    """Every model's payload log in one ingress replica (off for a model
    without settings, or without a sink)."""

    def __init__(self, metrics: PayloadLogMetrics | None = None) -> None:
        self._metrics = metrics
        self._logs: dict[str, ModelLog] = {}
        self._served: frozenset[str] | None = None

    def serving(self, names: frozenset[str]) -> None:
        """The names settings may be given for (unknown ones fail a reconfigure)."""
        self._served = names

    def configure(self, settings: Mapping[str, PayloadLogArgs],
                  sinks: Mapping[str, Sink] | None = None) -> None:
        """Retunes every model's logging live; a model whose sink changed gets
        a new one (the old one is flushed in the background). ``sinks``: for
        tests, a sink by model instead of the one its settings name."""
        if self._served is not None and (unknown := sorted(set(settings) - self._served)):
            raise ValueError(f"payload_logging names models this app does not serve: "
                             f"{', '.join(unknown)}")
        metrics = self._metrics = self._metrics or PayloadLogMetrics()
        for name in list(self._logs):
            wanted = settings.get(name)
            current = self._logs[name]
            if wanted is None or wanted.sink is None or wanted.sink != current.settings.sink \
                    or wanted.queue_records != current.settings.queue_records:
                del self._logs[name]
                threading.Thread(target=current.close, daemon=True).start()
            else:
                current.settings = wanted  # rate, redaction, cap: the next request
        for name, wanted in settings.items():
            if wanted.sink is not None and name not in self._logs:
                self._logs[name] = ModelLog(name, wanted, metrics, (sinks or {}).get(name))

    def log(self, model: str) -> ModelLog | None:
        return self._logs.get(model)

    def sample(self, model: str) -> Pending | None:
        """Whether a request for ``model`` starting now is logged (cheap: most
        requests stop at the first line)."""
        log = self._logs.get(model)
        if log is None:
            return None
        settings = log.settings
        info = current_request()
        forced = info is not None and info.force_log and settings.force_header
        if not forced and not (settings.sample_rate and random.random() < settings.sample_rate):
            return None
        if info is None:  # a handle call
            return Pending(new_request_id(), time.time(), time.perf_counter(), "handle",
                           False, settings.sample_rate)
        return Pending(info.request_id, info.time, info.started, info.protocol(), forced,
                       settings.sample_rate)

    def finish(self, pending: Pending, meta: ModelMetadata, inputs: Mapping[str, object],
               outputs: Mapping[str, np.ndarray] | None, error: BaseException | None) -> None:
        """The record of a request drawn by :meth:`sample`, queued: its
        ``inputs`` (the model's once decoded, else as given), and its
        ``outputs`` or ``error``. Never raises."""
        log = self._logs.get(meta.name)
        if log is None:
            return
        try:
            settings = log.settings
            given = pending.inputs is None
            ins, budget = keep_tensors(_as_tensors(inputs) if given else inputs,
                                       settings.inputs, settings.default,
                                       settings.max_record_bytes,
                                       None if given else _dtypes(meta.inputs))
            outs, _ = keep_tensors(outputs or {}, settings.outputs, settings.default, budget)
            status, message = _status(error)
            log.offer(PayloadRecord(
                pending.request_id, pending.time, meta.name, meta.version, meta.signature_name,
                pending.protocol, ins, outs, time.perf_counter() - pending.started, status,
                message, pending.sample_rate, pending.forced))
        except Exception:  # a record is never worth a request
            logger.exception("payload log of %r: the record could not be made", meta.name)

    def close(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Flushes every model's records within ``timeout_s`` (in parallel)."""
        logs, self._logs = list(self._logs.values()), {}
        threads = [threading.Thread(target=log.close, args=(timeout_s,)) for log in logs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout_s + 2.0)

    def counts(self) -> dict[str, Counts]:
        return {name: log.counts for name, log in self._logs.items()}
