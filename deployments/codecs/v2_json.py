"""KServe V2 over HTTP: the JSON body and the binary tensor data extension
(pure; no Ray, no TensorFlow).

A request body is a JSON header, optionally followed by raw tensor bytes when
the ``Inference-Header-Content-Length`` header gives the JSON's length. The
header's structure is checked by the pydantic models below (which also give
the OpenAPI document its schema); tensor data stays out of them: JSON
``data`` is read straight into numpy, binary data becomes numpy views of the
body (no copy per element).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError

from deployments.codecs.numbers import decimal_count
from deployments.codecs.tensor import parse_json
from deployments.codecs.v2_tensor import (
    BYTES,
    DATATYPES,
    InferRequest,
    OutputTensor,
    RequestedOutput,
    Tensor,
    as_datatype,
    check_datatype,
    check_shape,
    check_tensor_size,
    element_count,
    raw_to_tensor,
    tensor_to_raw,
)
from deployments.errors import BadRequest
from deployments.signature import ModelMetadata

HEADER_LENGTH = "Inference-Header-Content-Length"


class _Header(BaseModel):
    # Strict: "1" is not a shape dimension nor "yes" a boolean. Extra fields
    # are allowed, as the protocol lets clients add their own parameters.
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class InputParameters(_Header):
    binary_data_size: NonNegativeInt | None = Field(
        None, description="bytes of this input in the binary data after the JSON")


class InputTensor(_Header):
    """One input; ``data`` (JSON, flat or nested, row-major) or binary data."""

    name: str = Field(min_length=1)
    datatype: str = Field(json_schema_extra={"enum": [*DATATYPES, BYTES]})
    shape: list[NonNegativeInt]
    parameters: InputParameters = InputParameters()
    data: Any = Field(None, description="the values, unless sent as binary data")


class OutputParameters(_Header):
    binary_data: bool | None = None
    classification: NonNegativeInt = Field(
        0, description="> 0: the top classes as 'score:index:label' strings")


class OutputRequest(_Header):
    name: str = Field(min_length=1)
    parameters: OutputParameters = OutputParameters()


class RequestParameters(_Header):
    binary_data_output: bool = False
    signature_name: str | None = Field(
        None, description="another signature of the SavedModel than the model's default")


class InferRequestHeader(_Header):
    """The JSON of ``POST /v2/models/{name}/infer``."""

    id: str | None = None
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[OutputRequest] | None = None
    parameters: RequestParameters = RequestParameters()


# pydantic's error types, said for a JSON document.
_PHRASES = {
    "missing": "is required", "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object", "model_attributes_type": "must be a JSON object",
    "list_type": "must be a list", "string_type": "must be a string",
    "bool_type": "must be true or false", "int_type": "must be an integer",
    "greater_than_equal": "must not be negative", "string_too_short": "must not be empty",
    "too_short": "must not be empty", "string_unicode": "must be valid Unicode text",
}


def _where(loc: tuple[int | str, ...]) -> str:
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return path.lstrip(".") or "the request"


def _header(document: Any) -> InferRequestHeader:
    try:
        return InferRequestHeader.model_validate(document)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        phrase = _PHRASES.get(error["type"], error["msg"])
        raise BadRequest(f"{_where(error['loc'])} {phrase}") from None


def _json_data(value: Any, datatype: str, shape: tuple[int, ...],
               what: str) -> np.ndarray | list[bytes]:
    """JSON ``data`` (flat or nested, row-major) → data of ``shape``."""
    count = element_count(shape)
    if datatype == BYTES:
        flat = _flatten(value, what)
        if not all(isinstance(v, str) for v in flat):
            raise BadRequest(f"{what}: BYTES data must be strings")
        try:
            elements = [v.encode("utf-8") for v in flat]
        except UnicodeEncodeError:
            raise BadRequest(f"{what}: BYTES data must be valid Unicode text (a JSON string "
                             "holds a lone surrogate)") from None
        if len(elements) != count:
            raise BadRequest(f"{what}: {len(elements)} elements for shape {list(shape)}")
        return elements
    try:
        array = np.asarray(value)
    except ValueError:
        raise BadRequest(f"{what}: data is ragged or nested too deeply") from None
    if array.dtype.kind not in ("b" if datatype == "BOOL" else "iuf"):
        raise BadRequest(f"{what}: data must hold only "
                         f"{'booleans' if datatype == 'BOOL' else 'numbers'}")
    if DATATYPES[datatype].kind in "iu" and array.dtype.kind == "f":
        raise BadRequest(f"{what}: {datatype} data must be integers")
    if array.size != count:
        raise BadRequest(f"{what}: {array.size} elements for shape {list(shape)}")
    return as_datatype(array, datatype, shape, what)


# Nesting beyond any tensor's dimensions (numpy's own limit is 64).
_MAX_NESTING = 64


def _flatten(value: Any, what: str) -> list[Any]:
    """Nested lists' leaves in row-major order, without recursion."""
    leaves: list[Any] = []
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, list):
            leaves.append(item)
        elif depth >= _MAX_NESTING:
            raise BadRequest(f"{what}: data nested deeper than {_MAX_NESTING} levels")
        else:
            stack.extend((child, depth + 1) for child in reversed(item))
    return leaves


def parse_infer_request(body: bytes, header_length: str | None, max_rows: int,
                        max_elements: int,
                        count_inputs: Callable[[int], None] | None = None) -> InferRequest:
    """An infer request body → tensors; binary data is viewed, not copied.
    Each tensor's declared size is checked against the limits before its
    data is read, and (``count_inputs``) the number of tensors before any is."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        length = decimal_count(header_length)
        if length is None:
            raise BadRequest(f"{HEADER_LENGTH} must be a byte count, got "
                             f"{header_length[:20]!r}")
        if length > len(body):
            raise BadRequest(f"{HEADER_LENGTH} is {length} but the body has only "
                             f"{len(body)} bytes")
        header, binary = body[:length], memoryview(body)[length:]
    document = parse_json(header)
    if count_inputs is not None and isinstance(document, dict) and isinstance(
            document.get("inputs"), list):
        count_inputs(len(document["inputs"]))
    request = _header(document)
    offset = 0
    inputs = []
    for item in request.inputs:
        what = f"input {item.name!r}"
        datatype = check_datatype(item.datatype, what)
        shape = check_shape(item.shape, what)
        check_tensor_size(what, datatype, shape, max_rows, max_elements)
        size = item.parameters.binary_data_size
        if size is not None:
            if offset + size > len(binary):
                raise BadRequest(f"{what}: binary_data_size {size} runs past the end of "
                                 f"the body ({len(binary) - offset} bytes left)")
            data = raw_to_tensor(binary[offset:offset + size], datatype, shape, what)
            offset += size
        elif "data" in item.model_fields_set:
            data = _json_data(item.data, datatype, shape, what)
        else:
            raise BadRequest(f"{what} has neither \"data\" nor a binary_data_size")
        inputs.append(Tensor(item.name, datatype, shape, data))
    if offset != len(binary):
        raise BadRequest(f"the body carries {len(binary)} bytes of binary data but the "
                         f"inputs' binary_data_size add up to {offset}")
    outputs = None if request.outputs is None else [
        RequestedOutput(o.name, o.parameters.binary_data, o.parameters.classification)
        for o in request.outputs]
    return InferRequest(inputs=inputs, outputs=outputs, id=request.id,
                        binary_output=request.parameters.binary_data_output,
                        signature_name=request.parameters.signature_name)


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
            entry["data"] = _texts(out)
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


def _texts(out: OutputTensor) -> list[str]:
    """A BYTES output's elements as JSON strings, or a 400 where one is not
    UTF-8 text (replaced characters would corrupt it without a word)."""
    try:
        return [b.decode("utf-8") for b in out.data]
    except UnicodeDecodeError:
        raise BadRequest(f"output {out.name!r} holds bytes that are not UTF-8 text, which "
                         "JSON cannot carry: ask for it in binary (its \"parameters\": "
                         "{\"binary_data\": true})") from None
