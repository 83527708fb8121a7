"""One loaded version of a model, as a model replica serves it: its own
``serve.batch`` queue (rows of concurrent requests merged, padded to a bucket
under XLA, split back per caller), its warm-up, and ``max_batch_size: auto``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from deployments.codecs.tfserving import check_verb, examples_input
from deployments.config import InputLimits
from deployments.errors import BadRequest, ModelFailed, PayloadTooLarge, ServeError
from deployments.metrics import ModelMetrics
from deployments.replica.batching import (
    MAX_BATCH_SIZE,
    UNMEASURED_BATCH_SIZE,
    BatchSizing,
    bucket_for,
    bucket_sizes,
    chunk_rows,
    concat_outputs,
    gains,
    merge_rows,
    split_rows,
    throughputs,
)
from deployments.replica.warmup import WarmupCall, read_warmup, replay
from deployments.signature import STRING, ModelMetadata, check_inputs, fits_batch
from deployments.types import Inputs, Outputs, rows_of

if TYPE_CHECKING:
    from deployments.replica.runner import SavedModelRunner

logger = logging.getLogger("ray.serve")

# max_batch_size auto: each batch size is timed for at least this long (and
# three calls); larger sizes are not tried once one call takes longer than this:
_SIZING_SECONDS = 0.2
_SIZING_MAX_CALL_S = 1.0


class BatchSettings(BaseModel):
    """The model deployment's ``user_config``: retuned live, without restarts."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)] | Literal["auto"] = Field(
        UNMEASURED_BATCH_SIZE,
        description="auto: each replica times its batch sizes at warm-up and takes the "
                    "smallest within a few percent of its best throughput")
    batch_wait_timeout_s: float = Field(0.0, ge=0, le=10)


def _total_rows(parts: list[Inputs]) -> int:
    return sum(rows_of(p) for p in parts)


class ServedVersion:
    """One loaded version of the model with a batch queue per signature.

    Each (version, signature) gets its own ``serve.batch`` queue (the
    decorator keeps one queue per decorated function), so a batch never mixes
    versions or signatures. A request the signature cannot batch (no batch
    dimension, or tensors of other shapes than declared, fed as TF Serving
    feeds them) runs in a TensorFlow call of its own.
    """

    def __init__(self, runner: SavedModelRunner, executor: ThreadPoolExecutor,
                 settings: BatchSettings, cpu_threads: int | None = None) -> None:
        """``cpu_threads``: TensorFlow's threads when it runs on the CPU, whose
        batch sizes are then timed in CPU time (None: a GPU, timed by the clock)."""
        self.runner = runner
        self._executor = executor
        self._settings = settings
        self._cpu_threads = cpu_threads
        self._batch_seconds = 0.0  # moving average of one model call
        self.batch_rows: Counter[int] = Counter()
        self.buckets: list[int] = []
        self.sizing: BatchSizing | None = None  # measured when max_batch_size is auto
        self._batches: dict[str | None, Any] = {}  # serve.batch queues by signature
        self._metrics = ModelMetrics(runner.metadata.name, runner.metadata.version)
        self._waiting: set[int] = set()  # ids of the chunks queued for a batch
        self.warmup: dict[str, float] | None = None  # TF Serving's warm-up records replayed

    def replay_warmup(self) -> None:
        """TF Serving's warm-up records of this version, if it has any
        (``deployments.replica.warmup``), replayed before it serves: a record that
        fails fails the load. On the model's thread, like every batch."""
        calls = read_warmup(self.runner.path)
        if calls:
            seconds = replay(calls, partial(warm_call, self.runner))
            self.warmup = {"records": calls[-1].record + 1, "seconds": round(seconds, 6)}
            meta = self.runner.metadata
            logger.info("model %r version %d: %d warm-up records replayed in %.3f s",
                        meta.name, meta.version, self.warmup["records"], seconds)

    @property
    def max_batch_size(self) -> int:
        """The configured limit, or the one measured for ``auto``."""
        if self._settings.max_batch_size == "auto":
            assert self.sizing is not None, "auto batch size used before it was measured"
            return self.sizing.picked
        return self._settings.max_batch_size

    def _zeros(self, rows: int) -> Inputs:
        """A warm-up batch: zeros, empty strings, a variable dimension taken as 1."""
        batch = {}
        for spec in self.runner.metadata.inputs:
            shape = (rows, *(d or 1 for d in spec.shape[1:]))
            batch[spec.name] = (np.full(shape, b"", dtype=object) if spec.dtype == STRING
                                else np.zeros(shape, dtype=spec.dtype))
        return batch

    def _queue_for(self, signature: str | None) -> Any:
        """The batch queue of ``signature`` (none: the default), made on first use."""
        batch = self._batches.get(signature)
        if batch is None:
            async def run(parts: list[Inputs]) -> list[Outputs | Exception]:
                return await self._run_batch(signature, parts)

            batch = serve.batch(batch_size_fn=_total_rows)(run)
            # (serve.batch's typing omits the setters its wrapper has)
            batch.set_max_batch_size(self.max_batch_size)  # type: ignore[attr-defined]
            batch.set_batch_wait_timeout_s(  # type: ignore[attr-defined]
                self._settings.batch_wait_timeout_s)
            self._batches[signature] = batch
        return batch

    def warm_up(self, sizes: list[int]) -> None:
        """One call per batch size, then a timed warm call for the busy wait.

        Runs on the model's executor thread, which runs every batch: TF's
        per-thread state is ready before the first real request. A default
        signature that cannot batch is not warmed up (no shape to make up).
        """
        if not self.runner.metadata.batchable:
            return
        try:
            for rows in [*sizes, sizes[0]]:
                started = time.perf_counter()
                self.runner.run(self._zeros(rows))
        except BadRequest as exc:
            self._refused_zeros(exc)
            return
        self._batch_seconds = time.perf_counter() - started

    def _refused_zeros(self, exc: BadRequest) -> None:
        """A model whose graph refuses made-up inputs (an Example parser
        requiring features, say) serves unwarmed: its first batches trace."""
        meta = self.runner.metadata
        logger.warning("model %r version %d refuses zero-valued inputs, so it is not warmed "
                       "up or measured: %s", meta.name, meta.version, exc.message)

    def measure_batch_sizes(self) -> BatchSizing:
        """Time each power-of-two batch size on this replica's hardware (on the
        executor thread) and pick the smallest within a few percent of the best
        throughput, each call's cost to the serving path counted; larger sizes
        are tried only while they still gain."""
        timed: dict[int, float] = {}  # seconds per call, by batch size
        if not self.runner.metadata.batchable:
            self.sizing = BatchSizing.unmeasured()
            return self.sizing
        try:
            for size in bucket_sizes(MAX_BATCH_SIZE):
                batch = self._zeros(size)
                self.runner.run(batch)  # a new shape's first call sets up its kernels
                timed[size] = self._time_call(batch)
                if timed[size] > _SIZING_MAX_CALL_S or not gains(throughputs(timed)):
                    break
            # Noise that slows one timing would decide the pick: each size
            # keeps the best of two.
            for size in timed:
                timed[size] = min(timed[size], self._time_call(self._zeros(size)))
        except BadRequest as exc:
            self._refused_zeros(exc)
            self.sizing = BatchSizing.unmeasured()
            return self.sizing
        self.sizing = BatchSizing.pick(throughputs(timed))
        return self.sizing

    def _time_call(self, batch: Inputs) -> float:
        """Seconds per call of ``batch``: the mean of at least three calls
        and ``_SIZING_SECONDS``.

        On the CPU, the process's CPU time over TensorFlow's threads: replicas
        that start together time their sizes at once on shared cores, and by
        the clock, whichever size met the most contention lost (a replica of
        MobileNetV2 measured 45 rows/s at 1 row, 29 at 4, and took 1; alone
        it does 73 at 4)."""
        calls, started = 0, time.perf_counter()
        cpu_started = time.process_time()
        while calls < 3 or time.perf_counter() - started < _SIZING_SECONDS:
            self.runner.run(batch)
            calls += 1
        if self._cpu_threads is not None:
            return (time.process_time() - cpu_started) / self._cpu_threads / calls
        return (time.perf_counter() - started) / calls

    def new_buckets(self, settings: BatchSettings) -> list[int]:
        # (with max_batch_size auto, ModelDeployment measured the sizing first)
        limit = cast(BatchSizing, self.sizing).picked if settings.max_batch_size == "auto" else \
            settings.max_batch_size
        return [b for b in bucket_sizes(limit) if b not in self.buckets]

    def apply(self, settings: BatchSettings) -> None:
        """Switch to ``settings``; their buckets must be warm already."""
        self._settings = settings
        # Buckets only grow: a batch formed under an earlier, larger limit
        # still finds its (already warm) bucket.
        self.buckets = sorted({*self.buckets, *bucket_sizes(self.max_batch_size)})
        for batch in self._batches.values():
            batch.set_max_batch_size(self.max_batch_size)
            batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    def signature(self, name: str | None) -> ModelMetadata:
        return self.runner.metadata.signature(name)

    async def infer(self, inputs: Inputs, signature: str | None = None) -> Outputs:
        """Any number of rows, in chunks of at most ``max_batch_size``; a
        request its signature cannot batch, in a call of its own."""
        if not fits_batch(inputs, self.signature(signature)):
            return await self._run_unbatched(inputs, signature)
        chunks = chunk_rows(inputs, self.max_batch_size)
        return concat_outputs(await asyncio.gather(
            *(self._infer_chunk(c, signature) for c in chunks)))

    async def run_alone(self, inputs: Inputs, signature: str | None = None) -> Outputs:
        """``inputs`` in TensorFlow calls of their own, outside the batch queue:
        a request sent again after a crash shares a batch with no one."""
        if not fits_batch(inputs, self.signature(signature)):
            return await self._run_unbatched(inputs, signature)
        return concat_outputs([(await self._run_group(signature, [chunk]))[0]
                               for chunk in chunk_rows(inputs, self.max_batch_size)])

    async def _run_unbatched(self, inputs: Inputs, signature: str | None) -> Outputs:
        """One TensorFlow call on ``inputs`` as they are (TF Serving's way)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        outputs = await loop.run_in_executor(self._executor, self.runner.run, inputs,
                                             signature)
        self._metrics.batch(1, loop.time() - started)
        return outputs

    async def _infer_chunk(self, chunk: Inputs, signature: str | None) -> Outputs:
        self._queue(add=[chunk])
        try:
            answer = await self._queue_for(signature)(chunk)
        except RuntimeError:
            # Serve's batcher refuses an item over max_batch_size: it was
            # lowered live after this chunk was cut. Cut it again.
            if rows_of(chunk) <= self.max_batch_size:
                raise
            self._queue(remove=[chunk])  # its pieces queue instead
            return await self.infer(chunk, signature)
        finally:
            self._queue(remove=[chunk])  # also if cancelled while queued
        if isinstance(answer, Exception):  # its shape group's TensorFlow call failed
            raise answer
        return answer

    def _queue(self, add: Sequence[Inputs] = (), remove: Sequence[Inputs] = ()) -> None:
        self._waiting.update(id(a) for a in add)
        self._waiting.difference_update(id(a) for a in remove)
        self._metrics.queue_length(len(self._waiting))

    async def _run_batch(self, signature: str | None,
                         parts: list[Inputs]) -> list[Outputs | Exception]:
        """One TensorFlow call per combination of inner shapes among ``parts``
        (a model with a variable dimension, a sequence length say, gets
        requests that cannot share one tensor: they are batched with their
        own kind, not padded); each caller gets its rows, or its group's
        error, never another's."""
        self._queue(remove=parts)
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for i, part in enumerate(parts):
            groups.setdefault(tuple(a.shape[1:] for a in part.values()), []).append(i)
        results: list[Outputs | Exception] = [{}] * len(parts)
        # Serve forms the next batch while this one runs, closing it after
        # batch_wait_timeout_s: a few ms would cut it to the one or two
        # requests that arrived by then, to queue behind this batch anyway.
        # While the model is busy, wait as long as a batch takes instead, so
        # the next one fills with what arrives meanwhile (like Triton's and TF
        # Serving's batchers, which form a batch when the model is free).
        batch = self._queue_for(signature)
        batch.set_batch_wait_timeout_s(
            max(self._settings.batch_wait_timeout_s, self._batch_seconds))
        try:
            for indices in groups.values():
                group = [parts[i] for i in indices]
                try:
                    answers: list[Outputs | Exception] = list(
                        await self._run_group(signature, group))
                except (BadRequest, _Unsplittable) as exc:  # refused values: whose?
                    answers = [exc if isinstance(exc, BadRequest) else exc.outputs] \
                        if len(group) == 1 else [
                        await self._alone(signature, part) for part in group]
                except Exception as exc:  # this group's callers hear of it
                    answers = [exc] * len(group)
                for i, answer in zip(indices, answers, strict=True):
                    results[i] = answer
        finally:
            batch.set_batch_wait_timeout_s(self._settings.batch_wait_timeout_s)
        return results

    async def _alone(self, signature: str | None, part: Inputs) -> Outputs | Exception:
        """``part`` run in a call of its own, so a request whose values the
        model refuses fails alone, not with the batch it came in."""
        try:
            return (await self._run_group(signature, [part]))[0]
        except _Unsplittable as exc:
            return exc.outputs
        except Exception as exc:
            return exc

    async def _run_group(self, signature: str | None, parts: list[Inputs]) -> list[Outputs]:
        counts = [rows_of(p) for p in parts]
        rows = sum(counts)
        self.batch_rows[rows] += 1
        padded = bucket_for(rows, self.buckets) if self.runner.static_shapes else rows
        merged = merge_rows(parts, padded)
        loop = asyncio.get_running_loop()
        started = loop.time()
        outputs = await loop.run_in_executor(self._executor, self.runner.run, merged,
                                             signature)
        seconds = loop.time() - started
        self._metrics.batch(rows, seconds)
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
        if any(a.ndim == 0 or len(a) != padded for a in outputs.values()):
            # An output not one row per input row (the graph disagrees with
            # its SignatureDef): its rows cannot be told apart.
            raise _Unsplittable(outputs if len(parts) == 1 and padded == rows else None)
        return split_rows(outputs, counts)


class _Unsplittable(Exception):
    """A batch's outputs that cannot be split per request: run each request
    alone (``outputs``: a lone request's own, answered as they are)."""

    def __init__(self, outputs: Outputs | None) -> None:
        super().__init__("outputs without one row per input row")
        self.outputs: Outputs | Exception = outputs if outputs is not None else ModelFailed(
            "the model's outputs do not have one row per input row, as its signature says")


def warm_call(runner: SavedModelRunner, call: WarmupCall) -> None:
    """One warm-up request run as the protocol it was logged from would run it."""
    meta = runner.metadata.signature(call.signature_name)
    if call.kind == "predict":
        inputs = check_inputs(call.inputs, meta)
    else:
        check_verb(meta, call.kind)
        inputs = examples_input(meta, list(call.inputs[""]))
    runner.run(inputs, meta.named_signature)


async def answer_each(parts: Sequence[Inputs | ServeError], meta: ModelMetadata,
                      infer: Callable[[Inputs], Awaitable[Outputs]],
                      blame: str | None = None,
                      limits: InputLimits | None = None,
                      checked: bool = False) -> list[Outputs | ServeError]:
    """Each part of a coalesced call checked and run on its own: its outputs,
    or the error that applies to it alone (a part that is already an error,
    such as an input that could not be read, is answered with it; a model
    fault is reported without internal detail, and logged with its traceback).

    ``blame``: who built the inputs when the client did not (a pipeline's
    step): inputs that do not fit the signature, or whose values the model
    refuses, are then that one's fault, a 500 naming it, not the client's 400;
    so are inputs beyond ``limits`` (rows and numbers; none: unchecked), a
    fan-out of the data it built rather than what the client sent.

    ``checked``: a data plane checked each part against this signature
    before it put it (the ingress's, or a ``DirectClient``'s), so its values
    are not scanned again unless a cast narrows them (a part checked against
    an older signature): a second pass over every value cost the replica a
    tenth of its CPU in front of a GPU (the stand-in's profile, 2026-12-06).
    Names, dtypes, shapes and rows are still checked."""
    max_rows, max_elements = (limits.max_rows, limits.max_elements) if limits else (None, None)
    finite = [spec.name for spec in meta.inputs] if checked else []

    async def answer(part: Inputs | ServeError) -> Outputs | ServeError:
        if isinstance(part, ServeError):
            return part
        try:
            return await infer(check_inputs(part, meta, max_rows, max_elements, finite))
        # the inputs do not fit or are too large, or the model refused their values
        except (BadRequest, PayloadTooLarge) as exc:
            return exc if blame is None else ModelFailed(f"{blame}: {exc.message}")
        except ServeError as exc:
            return exc
        except Exception as exc:
            logger.exception("model %r version %d failed on a batch", meta.name, meta.version)
            return ModelFailed(f"model {meta.name!r} failed: {type(exc).__name__}")

    return list(await asyncio.gather(*(answer(p) for p in parts)))
