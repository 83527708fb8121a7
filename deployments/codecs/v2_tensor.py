"""KServe V2 / Open Inference Protocol tensors, whatever the transport: the
datatypes, shapes and raw little-endian layout that HTTP (``v2_json``) and
gRPC (``v2_grpc``) share, the outputs a request selects, and the model's V2
metadata (pure; no Ray, no TensorFlow).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deployments.codecs.predictions import top_k_indices
from deployments.errors import BadRequest, PayloadTooLarge
from deployments.signature import BFLOAT16, STRING, ModelMetadata, TensorSpec

PROTOCOL_VERSION = "2"
EXTENSIONS = ("binary_tensor_data", "classification")

# V2 datatypes and their little-endian numpy types; BYTES is handled apart.
DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(t).newbyteorder("<")
    for name, t in {
        "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
        "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
        "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
        "BF16": BFLOAT16,
    }.items()
}
BYTES = "BYTES"
_BY_DTYPE = {dtype.name: name for name, dtype in DATATYPES.items()}


def datatype_of(dtype: np.dtype | str) -> str:
    """The V2 datatype of a numpy dtype (strings and objects are BYTES)."""
    if dtype == STRING:
        return BYTES
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return BYTES
    return _BY_DTYPE[dtype.name]


@dataclass
class Tensor:
    """One named tensor: numeric data as an array, BYTES data as a list."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: the request's default
    classification: int = 0  # > 0: the top classes as "score:index:label" strings


@dataclass
class InferRequest:
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None  # None: every output
    id: str | None = None
    binary_output: bool = False  # the request's default for outputs
    # Another signature of the SavedModel than the model's default (the
    # request's ``signature_name`` parameter, as TF Serving names it).
    signature_name: str | None = None


@dataclass
class OutputTensor(Tensor):
    binary: bool = False  # sent as raw bytes after the JSON (binary extension)


# Bounds on shapes numpy can make an array of (it refuses over 64 dimensions,
# and sizes past 2**63 bytes counting every non-zero dimension, even in an
# empty array). Real limits on a request's size come later, from the config.
_MAX_DIMS = 32
_MAX_SPAN = 2**56


def check_shape(shape: Any, what: str) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequest(f"{what}: shape must be a list of non-negative integers")
    if len(shape) > _MAX_DIMS or math.prod(max(d, 1) for d in shape) > _MAX_SPAN:
        raise BadRequest(f"{what}: shape {list(shape)} is beyond any tensor (at most "
                         f"{_MAX_DIMS} dimensions, 2**56 elements)")
    return tuple(shape)


def check_datatype(datatype: Any, what: str) -> str:
    if datatype != BYTES and datatype not in DATATYPES:
        raise BadRequest(f"{what}: unsupported datatype {datatype!r}; use one of "
                         f"{', '.join([*DATATYPES, BYTES])}")
    return datatype


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def check_tensor_size(what: str, datatype: str, shape: tuple[int, ...], max_rows: int,
                      max_elements: int) -> None:
    """A 413 before a tensor is read when its declared shape is over the
    limits: rows (its first dimension), numbers, or BYTES elements (each an
    image or a string, walked one by one: at most ``max_rows`` of them)."""
    rows = shape[0] if shape else 1
    if rows > max_rows:
        raise PayloadTooLarge(f"{what} has {rows} rows, the limit is {max_rows}")
    count = element_count(shape)
    limit, unit = (max_rows, "BYTES elements") if datatype == BYTES else (max_elements,
                                                                          "numbers")
    if count > limit:
        raise PayloadTooLarge(f"{what} has {count} {unit}, the limit is {limit}")


def raw_to_tensor(raw: memoryview | bytes, datatype: str, shape: tuple[int, ...],
                  what: str) -> np.ndarray | list[bytes]:
    """Raw little-endian bytes (the binary extension, gRPC raw contents) → data.

    Numeric data becomes a read-only view of ``raw``; BYTES elements are each
    a 4-byte little-endian length followed by that many bytes.
    """
    count = element_count(shape)
    if datatype == BYTES:
        return _split_bytes(memoryview(raw), count, what)
    dtype = DATATYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(f"{what}: {len(raw)} bytes of data, but shape {list(shape)} of "
                         f"{datatype} needs {count * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _split_bytes(raw: memoryview, count: int, what: str) -> list[bytes]:
    elements, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise BadRequest(f"{what}: BYTES data ends inside an element's length prefix")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise BadRequest(f"{what}: BYTES element of {size} bytes runs past the data")
        elements.append(bytes(raw[offset:offset + size]))
        offset += size
    if offset != len(raw):
        raise BadRequest(f"{what}: {len(raw) - offset} bytes left over after {count} "
                         "BYTES elements")
    return elements


def tensor_to_raw(tensor: OutputTensor) -> bytes:
    """The raw little-endian form of a tensor's data."""
    if tensor.datatype == BYTES:
        return b"".join(struct.pack("<I", len(b)) + b for b in tensor.data)
    return np.ascontiguousarray(tensor.data, dtype=DATATYPES[tensor.datatype]).tobytes()


def as_datatype(array: np.ndarray, datatype: str, shape: tuple[int, ...],
                what: str) -> np.ndarray:
    """Numbers → ``datatype``'s numpy type in ``shape``; out-of-range values refused."""
    target = DATATYPES[datatype]
    if target.kind in "iu" and array.size and array.dtype.kind in "iu":
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise BadRequest(f"{what}: values out of range for {datatype}")
    try:
        with np.errstate(over="raise", invalid="raise"):
            return array.astype(target, casting="unsafe").reshape(shape)
    except (FloatingPointError, OverflowError):
        raise BadRequest(f"{what}: values out of range for {datatype}") from None


def as_bytes(array: np.ndarray) -> list[bytes]:
    """A string array's elements in row-major order, as bytes."""
    return [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()]


def classify(scores: np.ndarray, labels: tuple[str, ...], k: int) -> np.ndarray:
    """Triton's classification extension: per row, the ``k`` best classes as
    ``"value:index:label"`` strings, best first (``"value:index"`` where the
    output has no labels; integer values as integers, as Triton writes them)."""
    rows = scores.reshape(len(scores), -1)
    if rows.dtype == BFLOAT16:
        rows = rows.astype(np.float32)
    best = top_k_indices(rows, k)
    value = "{:f}" if rows.dtype.kind == "f" else "{}"

    def text(row: np.ndarray, i: int) -> bytes:
        label = f":{labels[i]}" if i < len(labels) else ""
        return f"{value.format(row[i])}:{i}{label}".encode()

    return np.array([[text(row, i) for i in idx] for row, idx in zip(rows, best, strict=True)],
                    dtype=object)


def select_outputs(request: InferRequest, meta: ModelMetadata,
                   results: dict[str, np.ndarray]) -> list[OutputTensor]:
    """The outputs a request asked for (all by default: every one the
    model's postprocess code leaves), classified on request."""
    wanted = request.outputs or [RequestedOutput(name) for name in results]
    tensors = []
    for out in wanted:
        if out.name not in results:
            raise BadRequest(f"model {meta.name!r} has no output {out.name!r} (it has: "
                             f"{', '.join(sorted(results))})")
        data: np.ndarray = results[out.name]
        binary = request.binary_output if out.binary is None else out.binary
        if out.classification:
            if datatype_of(data.dtype) in (BYTES, "BOOL") or not data.size:
                raise BadRequest(f"output {out.name!r} of model {meta.name!r} holds no "
                                 "numbers to classify")
            labels = meta.labels if out.name == meta.scores_output else ()
            data = classify(data, labels, out.classification)
            tensors.append(OutputTensor(out.name, BYTES, data.shape, list(data.ravel()), binary))
        elif datatype_of(data.dtype) == BYTES:  # a string output: its elements as bytes
            tensors.append(OutputTensor(out.name, BYTES, data.shape, as_bytes(data), binary))
        else:
            tensors.append(OutputTensor(out.name, datatype_of(data.dtype), data.shape, data,
                                        binary))
    return tensors


def _dims(shape: Sequence[int | None]) -> list[int]:
    """Dimensions as V2 and Triton write them: -1 for any size."""
    return [-1 if d is None else d for d in shape]


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": datatype_of(spec.dtype), "shape": _dims(spec.shape)}


def model_config(meta: ModelMetadata, max_rows: int) -> dict[str, Any]:
    """``GET /v2/models/{name}/config``, Triton's model configuration (what
    its clients and perf_analyzer read for ``max_batch_size`` and each
    tensor's type and dims): a signature that batches takes up to
    ``max_rows`` rows a request, and its dims leave the batch dimension out."""
    batch = max_rows if meta.batchable else 0

    def tensor(spec: TensorSpec, image: bool = False) -> dict[str, Any]:
        datatype = datatype_of(spec.dtype)
        dims = _dims(spec.shape[1 if batch else 0:])
        entry: dict[str, Any] = {
            "name": spec.name, "data_type": f"TYPE_{'STRING' if datatype == BYTES else datatype}",
            "dims": dims or [1]}
        if not dims:  # one value a row: Triton's dims may not be empty
            entry["reshape"] = {"shape": []}
        if image and len(dims) == 3:  # [height, width, channels], as decoded here
            entry["format"] = "FORMAT_NHWC"
        return entry

    return {"name": meta.name, "platform": "tensorflow_savedmodel", "backend": "tensorflow",
            "max_batch_size": batch,
            "input": [tensor(s, s.name == meta.image_input) for s in meta.inputs],
            "output": [tensor(s) for s in meta.outputs]}


def model_metadata(meta: ModelMetadata, versions: list[int]) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the signature in V2 terms. An image model's
    image input also takes BYTES (encoded images), noted in its parameters."""
    inputs = [tensor_metadata(s) for s in meta.inputs]
    for entry in inputs:
        if entry["name"] == meta.image_input:
            entry["parameters"] = {"also_accepts": "BYTES [N] encoded images"}
    return {"name": meta.name, "versions": [str(v) for v in versions],
            "platform": "tensorflow_savedmodel", "inputs": inputs,
            "outputs": [tensor_metadata(s) for s in meta.outputs]}
