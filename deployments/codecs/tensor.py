"""JSON tensors → numpy, input by input: numbers and booleans through numpy
(no per-element Python work beyond what ``json`` and ``numpy`` do), text and
``{"b64": ...}`` binary strings as bytes for string inputs, and the image
input's ``{"b64": ...}`` values kept as encoded images to decode. The row
format (``instances``) and the columnar one (``inputs``) both end here."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployments.errors import BadRequest, PayloadTooLarge
from deployments.signature import STRING, ModelMetadata, check_input_names

# Nesting beyond any tensor's dimensions (numpy's own limit is 64).
MAX_NESTING = 64


def _refuse_constant(name: str) -> None:
    raise BadRequest(f"{name} is not a number JSON allows")


def parse_json(body: bytes) -> Any:
    """Parse a JSON request body or raise a 400 that says where it broke."""
    if not body:
        raise BadRequest("empty request body")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 JSON") from None
    except RecursionError:
        raise BadRequest("JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:  # an integer literal past Python's 4300-digit limit
        raise BadRequest(f"malformed JSON: {exc}") from None


def check_rows(rows: int, max_rows: int, what: str) -> None:
    """A 413 when a list of rows is longer than allowed, before it is read."""
    if rows > max_rows:
        raise PayloadTooLarge(f"{what} has {rows} rows, the limit is {max_rows}")


def is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def decode_b64(value: dict[str, Any], where: str) -> bytes:
    if not isinstance(value["b64"], str):
        raise BadRequest(f"{where}: \"b64\" must be a base64 string")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: \"b64\" is not valid base64") from None


@dataclass
class JsonInputs:
    """A request's inputs from JSON: arrays by name, and the image input's
    encoded images when it was sent as ``{"b64": ...}`` values."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    images: list[bytes] | None = None


def rows_by_input(instances: Any, meta: ModelMetadata, max_rows: int,
                  what: str = '"instances"') -> dict[str, list[Any]]:
    """The row format: a list of instances, each ``{input: value}`` for every
    input, or (one input) the value itself; → each input's list of rows. The
    rows are counted before any is read."""
    if not isinstance(instances, list) or not instances:
        raise BadRequest(f"{what} must be a non-empty list")
    check_rows(len(instances), max_rows, what)
    if len(meta.inputs) == 1:
        name = meta.inputs[0].name
        return {name: [_value_of(row, name, meta, f"{what}[{i}]")
                       for i, row in enumerate(instances)]}
    for i, row in enumerate(instances):
        if not isinstance(row, dict) or is_b64(row):
            raise BadRequest(f"{what}[{i}] must name every input: model {meta.name!r} "
                             f"takes {meta.describe_inputs()}")
        check_input_names(row, meta, f"{what}[{i}]")
    return {spec.name: [row[spec.name] for row in instances] for spec in meta.inputs}


def _value_of(row: Any, name: str, meta: ModelMetadata, where: str) -> Any:
    """The one input's value in a row: named (``{"x": value}``) or bare."""
    if isinstance(row, dict) and not is_b64(row):
        check_input_names(row, meta, where)
        return row[name]
    return row


def columns_by_input(columns: Any, meta: ModelMetadata, max_rows: int,
                     what: str = '"inputs"') -> dict[str, Any]:
    """The columnar format: ``{input: its whole tensor}``, or (one input) the
    tensor itself; a bare value is a tensor of rank 0, as TF Serving takes it."""
    if not isinstance(columns, dict) or is_b64(columns):
        columns = {meta.single_input.name: columns}
    for name, rows in columns.items():
        if (isinstance(rows, list) and not rows) or (isinstance(rows, dict) and not is_b64(rows)):
            raise BadRequest(f'{what} must hold a non-empty list or a value for {name!r}')
        if isinstance(rows, list):
            check_rows(len(rows), max_rows, f"{what}[{name!r}]")
    return columns


def json_inputs(values: dict[str, Any], meta: ModelMetadata, what: str) -> JsonInputs:
    """Each input's JSON value → an array of its kind (checked against the
    signature later, with the arrays of every other protocol)."""
    check_input_names(values, meta, what)
    result = JsonInputs()
    for name, value in values.items():
        spec = meta.spec(name)
        where = f"{what} for {name!r}"
        binary = isinstance(value, list) and [is_b64(v) for v in value]
        if name == meta.image_input and binary and any(binary):
            if not all(binary):
                raise BadRequest(f"{where}: a mix of {{\"b64\": ...}} and other values")
            result.images = [decode_b64(v, f"{where}[{i}]") for i, v in enumerate(value)]
        elif binary and any(binary) and spec is not None and spec.dtype != STRING:
            meta.image_spec()  # a 400 saying the model takes tensors, not images
            raise BadRequest(f"{where}: input {name!r} is {spec.describe()}, not "
                             "binary strings")
        elif spec is not None and spec.dtype == STRING:
            result.arrays[name] = strings_to_array(value, where)
        else:
            result.arrays[name] = rows_to_array(value, where)
    return result


def rows_to_array(rows: Any, what: str) -> np.ndarray:
    """Numbers or booleans (nested lists) → one array, row 0 first."""
    try:
        array = np.asarray(rows)
    except ValueError:
        raise BadRequest(f"{what} is ragged (every row must have the same shape) or nested "
                         "too deeply") from None
    if array.dtype.kind not in "biuf":
        raise BadRequest(f"{what} must hold only numbers")
    return array


def strings_to_array(rows: Any, what: str) -> np.ndarray:
    """Text (as UTF-8) or ``{"b64": ...}`` values (nested lists) → an object
    array of bytes."""
    def leaf(value: Any) -> bytes:
        if isinstance(value, str):
            try:
                return value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest(f"{what} holds text that is not valid Unicode (a lone "
                                 "surrogate)") from None
        if is_b64(value):
            return decode_b64(value, what)
        raise BadRequest(f"{what} must hold only strings or {{\"b64\": ...}} values")

    converted = _map_leaves(rows, leaf, what)
    try:
        array = np.array(converted, dtype=object)
    except ValueError:  # ragged in a way numpy refuses even for objects
        array = np.empty(0, dtype=object)
    if not array.size or not all(isinstance(v, bytes) for v in array.flat):
        raise BadRequest(f"{what} is ragged (every row must have the same shape) or empty")
    return array


def _map_leaves(value: Any, leaf: Any, what: str, depth: int = 0) -> Any:
    if not isinstance(value, list):
        return leaf(value)
    if depth >= MAX_NESTING:
        raise BadRequest(f"{what} is nested deeper than {MAX_NESTING} levels")
    return [_map_leaves(v, leaf, what, depth + 1) for v in value]
