"""KServe V2 / Open Inference Protocol over HTTP: JSON and the binary tensor
data extension (pure; no Ray, no TensorFlow).

A request body is a JSON header, optionally followed by raw tensor bytes when
the ``Inference-Header-Content-Length`` header gives the JSON's length.
Binary inputs become numpy views of the body (no copy per element); the gRPC
codec (:mod:`deployments.codecs.v2_grpc`) shares the tensor types and the raw
layout defined here.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployments.codecs.errors import BadRequest
from deployments.codecs.tensor import parse_json
from deployments.signature import ModelMetadata, TensorSpec

HEADER_LENGTH = "Inference-Header-Content-Length"
PROTOCOL_VERSION = "2"
EXTENSIONS = ("binary_tensor_data", "classification")

# V2 datatypes and their little-endian numpy types; BYTES is handled apart.
DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(t).newbyteorder("<")
    for name, t in {
        "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
        "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
        "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    }.items()
}
BYTES = "BYTES"
_BY_DTYPE = {dtype.name: name for name, dtype in DATATYPES.items()}


def datatype_of(dtype: np.dtype | str) -> str:
    """The V2 datatype of a numpy dtype (strings and objects are BYTES)."""
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
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputTensor(Tensor):
    binary: bool = False  # sent as raw bytes after the JSON (binary extension)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{what} must be a non-empty string")
    return value


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


def _json_data(value: Any, datatype: str, shape: tuple[int, ...],
               what: str) -> np.ndarray | list[bytes]:
    """JSON ``data`` (flat or nested, row-major) → data of ``shape``."""
    count = element_count(shape)
    if datatype == BYTES:
        flat = _flatten(value)
        if not all(isinstance(v, str) for v in flat):
            raise BadRequest(f"{what}: BYTES data must be strings")
        elements = [v.encode("utf-8") for v in flat]
        if len(elements) != count:
            raise BadRequest(f"{what}: {len(elements)} elements for shape {list(shape)}")
        return elements
    try:
        array = np.asarray(value)
    except ValueError:
        raise BadRequest(f"{what}: data is ragged") from None
    if array.dtype.kind not in ("b" if datatype == "BOOL" else "iuf"):
        raise BadRequest(f"{what}: data must hold only "
                         f"{'booleans' if datatype == 'BOOL' else 'numbers'}")
    if DATATYPES[datatype].kind in "iu" and array.dtype.kind == "f":
        raise BadRequest(f"{what}: {datatype} data must be integers")
    if array.size != count:
        raise BadRequest(f"{what}: {array.size} elements for shape {list(shape)}")
    return as_datatype(array, datatype, shape, what)


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


def _flatten(value: Any) -> list[Any]:
    if not isinstance(value, list):
        return [value]
    return [leaf for item in value for leaf in _flatten(item)]


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """An infer request body → tensors; binary data is viewed, not copied."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if not header_length.isascii() or not header_length.isdigit():
            raise BadRequest(f"{HEADER_LENGTH} must be a byte count, got {header_length!r}")
        length = int(header_length)
        if length > len(body):
            raise BadRequest(f"{HEADER_LENGTH} is {length} but the body has only "
                             f"{len(body)} bytes")
        header, binary = body[:length], memoryview(body)[length:]
    document = _object(parse_json(header), "the request")
    inputs_json = document.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise BadRequest('"inputs" must be a non-empty list of tensors')
    offset = 0
    inputs = []
    for i, item in enumerate(inputs_json):
        item = _object(item, f"inputs[{i}]")
        name = _string(item.get("name"), f"inputs[{i}].name")
        what = f"input {name!r}"
        datatype = check_datatype(item.get("datatype"), what)
        shape = check_shape(item.get("shape"), what)
        params = _object(item.get("parameters", {}), f"{what} parameters")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f"{what}: binary_data_size must be a byte count")
            if offset + size > len(binary):
                raise BadRequest(f"{what}: binary_data_size {size} runs past the end of "
                                 f"the body ({len(binary) - offset} bytes left)")
            data = raw_to_tensor(binary[offset:offset + size], datatype, shape, what)
            offset += size
        elif "data" in item:
            data = _json_data(item["data"], datatype, shape, what)
        else:
            raise BadRequest(f"{what} has neither \"data\" nor a binary_data_size")
        inputs.append(Tensor(name, datatype, shape, data))
    if offset != len(binary):
        raise BadRequest(f"the body carries {len(binary)} bytes of binary data but the "
                         f"inputs' binary_data_size add up to {offset}")
    params = _object(document.get("parameters", {}), "parameters")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest('"id" must be a string')
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise BadRequest("binary_data_output must be true or false")
    return InferRequest(
        inputs=inputs, outputs=_requested_outputs(document.get("outputs")), id=request_id,
        binary_output=binary_output, parameters=params,
    )


def _requested_outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequest('"outputs" must be a list')
    outputs = []
    for i, item in enumerate(value):
        item = _object(item, f"outputs[{i}]")
        name = _string(item.get("name"), f"outputs[{i}].name")
        params = _object(item.get("parameters", {}), f"output {name!r} parameters")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise BadRequest(f"output {name!r}: binary_data must be true or false")
        classes = params.get("classification", 0)
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
            raise BadRequest(f"output {name!r}: classification must be a class count")
        outputs.append(RequestedOutput(name, binary, classes))
    return outputs


def as_bytes(array: np.ndarray) -> list[bytes]:
    """A string array's elements in row-major order, as bytes."""
    return [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()]


def classify(scores: np.ndarray, labels: tuple[str, ...], k: int) -> np.ndarray:
    """Triton's classification extension: per row, the ``k`` best classes as
    ``"score:index:label"`` strings, best first."""
    rows = scores.reshape(len(scores), -1)
    k = min(k, rows.shape[1])
    best = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    return np.array([[f"{row[i]:f}:{i}:{labels[i]}".encode() for i in idx]
                     for row, idx in zip(rows, best, strict=True)], dtype=object)


def select_outputs(request: InferRequest, meta: ModelMetadata,
                   results: dict[str, np.ndarray]) -> list[OutputTensor]:
    """The outputs a request asked for (all by default), classified on request."""
    wanted = request.outputs or [RequestedOutput(o.name) for o in meta.outputs]
    tensors = []
    for out in wanted:
        if out.name not in results:
            raise BadRequest(f"model {meta.name!r} has no output {out.name!r} (it has: "
                             f"{', '.join(sorted(results))})")
        data: np.ndarray = results[out.name]
        binary = request.binary_output if out.binary is None else out.binary
        if out.classification:
            if out.name != meta.scores_output or not meta.labels:
                raise BadRequest(f"output {out.name!r} of model {meta.name!r} holds no class "
                                 "scores to classify")
            data = classify(data, meta.labels, out.classification)
            tensors.append(OutputTensor(out.name, BYTES, data.shape, list(data.ravel()), binary))
        elif datatype_of(data.dtype) == BYTES:  # a string output: its elements as bytes
            tensors.append(OutputTensor(out.name, BYTES, data.shape, as_bytes(data), binary))
        else:
            tensors.append(OutputTensor(out.name, datatype_of(data.dtype), data.shape, data,
                                        binary))
    return tensors


def encode_infer_response(meta: ModelMetadata, request_id: str | None,
                          outputs: list[OutputTensor]) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary outputs, the JSON's length."""
    blobs: list[bytes] = []
    tensors = []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype,
                                 "shape": list(out.shape)}
        if out.binary:
            blob = tensor_to_raw(out)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif out.datatype == BYTES:
            entry["data"] = [b.decode("utf-8", "replace") for b in out.data]
        else:
            entry["data"] = np.asarray(out.data).ravel().tolist()
        tensors.append(entry)
    document: dict[str, Any] = {"model_name": meta.name, "model_version": str(meta.version),
                                "outputs": tensors}
    if request_id is not None:
        document["id"] = request_id
    header = json.dumps(document, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": datatype_of(spec.dtype),
            "shape": [-1 if d is None else d for d in spec.shape]}


def model_metadata(meta: ModelMetadata, versions: list[int]) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the signature in V2 terms. An image model's
    input also takes BYTES (encoded images), noted in its parameters."""
    inputs = [tensor_metadata(s) for s in meta.inputs]
    if meta.takes_images:
        inputs[0]["parameters"] = {"also_accepts": "BYTES [N] encoded images"}
    return {"name": meta.name, "versions": [str(v) for v in versions],
            "platform": "tensorflow_savedmodel", "inputs": inputs,
            "outputs": [tensor_metadata(s) for s in meta.outputs]}
