"""TF Serving's model warm-up (``--enable_model_warmup``): the requests in a
version's ``assets.extra/tf_serving_warmup_requests`` replayed before the
version takes traffic.

That file is a TFRecord file of ``tensorflow.serving.PredictionLog`` protos.
As TF Serving does (``saved_model_warmup.cc``, ``saved_model_warmup_util.cc``),
predict, classify, regress and multi-inference logs are run, every other log
type is refused, at most :data:`MAX_RECORDS` records are read, each record
is run ``num_request_iterations`` times in turn, a record with no log set is
skipped, and any failure fails the version's load. Unlike TF Serving, the
whole file is read and checked before anything runs.
Messages keep TF Serving's wording, prefixed with the record (0-based) and
the file. Runs in a model replica, where TensorFlow is imported.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from google.protobuf.message import DecodeError

from deployments.codecs.tfserving_grpc import serialized_examples, tensor_input
from deployments.codecs.tfserving_protos import input_pb2, prediction_log_pb2
from deployments.errors import ServeError

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # WarmupConsts::kMaxNumRecords

WarmupKind = Literal["predict", "classify", "regress"]
# InferenceTask.method_name → kind (TF Serving's kClassifyMethodName, kRegressMethodName).
_TASK_KINDS: dict[str, WarmupKind] = {
    "tensorflow/serving/classify": "classify",
    "tensorflow/serving/regress": "regress",
}


class WarmupError(ValueError):
    """A warm-up file that cannot be read, or a warm-up request that failed:
    the version must not load."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class WarmupCall:
    """One request of a warm-up record, decoded.

    ``signature_name`` is as the record names it ("" means the model's
    default). Predict ``inputs`` are by input name; classify and regress have
    one input, ``""``: a 1-D object array of serialized ``tf.Example`` bytes,
    which the caller maps onto the signature's examples input."""

    kind: WarmupKind
    signature_name: str
    inputs: dict[str, np.ndarray]
    record: int  # the record's index in the file, 0-based
    output_filter: tuple[str, ...] = ()


def _where(index: int, path: Path) -> str:
    return f"warmup record {index} of {path}"


def _records(path: Path) -> Iterator[bytes]:
    """The file's records, CRCs checked; a ``WarmupError`` on a corrupt or
    truncated file (TF Serving: DataLoss) or past :data:`MAX_RECORDS`."""
    import tensorflow as tf  # loaded already in a model replica

    index = 0
    try:
        for record in tf.compat.v1.io.tf_record_iterator(str(path)):
            if index >= MAX_RECORDS:
                raise WarmupError(f"Number of warmup records exceeds the maximum "
                                  f"({MAX_RECORDS}) at {path}")
            yield record
            index += 1
    except tf.errors.OpError as exc:
        raise WarmupError(f"{_where(index, path)}: {exc.message}. Please verify your "
                          "warmup data is in TFRecord format.") from exc


def _examples(message: input_pb2.Input, where: str) -> dict[str, np.ndarray]:
    serialized = serialized_examples(message)
    if not serialized:
        raise WarmupError(f"{where}: Input is empty.")
    array = np.empty(len(serialized), dtype=object)
    array[:] = serialized
    return {"": array}


def _calls(log: prediction_log_pb2.PredictionLog, index: int, path: Path) -> list[WarmupCall]:
    where = _where(index, path)
    log_type = log.WhichOneof("log_type")
    if log_type == "predict_log":
        request = log.predict_log.request
        try:
            inputs = {name: tensor_input(name, proto).decode()
                      for name, proto in request.inputs.items()}
        except ServeError as exc:
            raise WarmupError(f"{where}: {exc.message}") from exc
        return [WarmupCall("predict", request.model_spec.signature_name, inputs, index,
                           tuple(request.output_filter))]
    if log_type in ("classify_log", "regress_log"):
        request = getattr(log, log_type).request
        kind: WarmupKind = "classify" if log_type == "classify_log" else "regress"
        return [WarmupCall(kind, request.model_spec.signature_name,
                           _examples(request.input, where), index)]
    if log_type == "multi_inference_log":
        request = log.multi_inference_log.request
        inputs = _examples(request.input, where)
        calls = []
        for task in request.tasks:
            if task.method_name not in _TASK_KINDS:
                raise WarmupError(f"{where}: Unsupported signature method_name: "
                                  f"{task.method_name}")
            calls.append(WarmupCall(_TASK_KINDS[task.method_name],
                                    task.model_spec.signature_name, inputs, index))
        return calls
    if log_type is None:  # TF Serving skips it
        return []
    raise WarmupError(f"{where}: Unsupported log_type for warmup: {log_type}")


def read_warmup(version_dir: Path) -> list[WarmupCall]:
    """The warm-up calls of a SavedModel version directory, in file order
    (a multi-inference record: one call per task); ``[]`` without a file."""
    path = version_dir / WARMUP_FILE
    if not path.is_file():
        return []
    calls: list[WarmupCall] = []
    for index, record in enumerate(_records(path)):
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(record)
        except DecodeError as exc:
            raise WarmupError(f"Failed to parse {_where(index, path)}: {exc}") from exc
        calls.extend(_calls(log, index, path))
    return calls


def replay(calls: Sequence[WarmupCall], run: Callable[[WarmupCall], object],
           iterations: int = 1) -> float:
    """Runs the calls in order, each record's calls ``iterations`` times
    (TF Serving's ``num_request_iterations``) before the next record's;
    returns the seconds taken. The first failure stops it as a
    ``WarmupError``."""
    start = time.perf_counter()
    for _, group in itertools.groupby(calls, key=lambda call: call.record):
        record_calls = list(group)
        for _ in range(iterations):
            for call in record_calls:
                try:
                    run(call)
                except Exception as exc:
                    signature = (f"signature {call.signature_name!r}" if call.signature_name
                                 else "the default signature")
                    message = getattr(exc, "message", str(exc))
                    raise WarmupError(f"warmup record {call.record} ({call.kind}, {signature}) "
                                      f"failed: {message}") from exc
    return time.perf_counter() - start
