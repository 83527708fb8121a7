"""TensorFlow Serving's REST API: request and response bodies (pure; no Ray).

``:predict`` takes the row format (``"instances"``) or the columnar format
(``"inputs"``); a value may be named by input or, for a single-input model,
given bare. ``{"b64": "..."}`` values carry binary strings: for image models
they are encoded images, decoded by the image codec like any upload.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np

from deployments.codecs.errors import BadRequest
from deployments.codecs.tensor import check_rows
from deployments.signature import ModelMetadata, TensorSpec


@dataclass(frozen=True)
class PredictRequest:
    """The one input's value, as sent: a list of rows, or encoded blobs."""

    signature_name: str | None
    columnar: bool
    value: list[Any] | list[bytes]
    is_binary: bool


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _decode_b64(value: Any, where: str) -> bytes:
    if not isinstance(value["b64"], str):
        raise BadRequest(f"{where}: \"b64\" must be a base64 string")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: \"b64\" is not valid base64") from None


def _single_input(value: Any, spec: TensorSpec, what: str) -> Any:
    """A value named by input (``{"image": ...}``) or bare, for ``spec``."""
    if isinstance(value, dict) and not _is_b64(value):
        if set(value) != {spec.name}:
            names = ", ".join(sorted(map(str, value))) or "none"
            raise BadRequest(f"{what} names inputs {names}; the model takes one "
                             f"input, {spec.name!r}")
        return value[spec.name]
    return value


def parse_predict_request(document: Any, spec: TensorSpec, max_rows: int) -> PredictRequest:
    """A ``:predict`` body → the value of the model's single input ``spec``; the
    rows are counted against ``max_rows`` before any is read."""
    if not isinstance(document, dict):
        raise BadRequest("the request must be a JSON object")
    has_rows, has_columns = "instances" in document, "inputs" in document
    if has_rows == has_columns:
        raise BadRequest('the request must have exactly one of "instances" (row format) '
                         'or "inputs" (columnar format)')
    signature = document.get("signature_name")
    if signature is not None and not isinstance(signature, str):
        raise BadRequest('"signature_name" must be a string')
    if has_rows:
        instances = document["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequest('"instances" must be a non-empty list')
        check_rows(len(instances), max_rows, '"instances"')
        rows = [_single_input(row, spec, f"instances[{i}]") for i, row in enumerate(instances)]
    else:
        rows = _single_input(document["inputs"], spec, '"inputs"')
        if not isinstance(rows, list) or not rows:
            raise BadRequest(f'"inputs" must hold a non-empty list for {spec.name!r}')
        check_rows(len(rows), max_rows, '"inputs"')
    binary = [_is_b64(row) for row in rows]
    if any(binary):
        if not all(binary):
            raise BadRequest("mix of {\"b64\": ...} and other values in one input")
        where = "instances" if has_rows else "inputs"
        blobs = [_decode_b64(row, f"{where}[{i}]") for i, row in enumerate(rows)]
        return PredictRequest(signature, not has_rows, blobs, True)
    return PredictRequest(signature, not has_rows, rows, False)


def _values(name: str, array: np.ndarray) -> Any:
    """An output as JSON values: strings as UTF-8, or ``{"b64": ...}`` for
    outputs named ``*_bytes``, as TF Serving writes them."""
    if array.dtype.kind not in "OSU":
        return array.tolist()
    binary = name.endswith("_bytes")

    def encode(value: Any) -> Any:
        if isinstance(value, list):
            return [encode(v) for v in value]
        raw = value if isinstance(value, bytes) else str(value).encode()
        return {"b64": base64.b64encode(raw).decode()} if binary else raw.decode("utf-8",
                                                                                "replace")

    return encode(array.tolist())


def encode_predict_response(outputs: dict[str, np.ndarray], columnar: bool) -> dict[str, Any]:
    """``{"predictions": [...]}`` per row, or ``{"outputs": ...}`` per output;
    a single output is given bare, several by name, as TF Serving does.
    Non-finite floats stay NaN/Infinity, as TF Serving writes them."""
    if any(array.ndim == 0 for array in outputs.values()) and not columnar:
        raise BadRequest("an output has no batch dimension: ask in the columnar format "
                         '("inputs")')
    values = {name: _values(name, array) for name, array in outputs.items()}
    if columnar:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    rows = len(next(iter(values.values())))
    return {"predictions": [{name: column[i] for name, column in values.items()}
                            for i in range(rows)]}


def model_status(versions: list[int]) -> dict[str, Any]:
    """``GET /v1/models/{name}``: every served version is available."""
    return {"model_version_status": [
        {"version": str(v), "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}}
        for v in sorted(versions, reverse=True)
    ]}


def model_metadata(meta: ModelMetadata) -> dict[str, Any]:
    """``GET /v1/models/{name}/metadata``: the SavedModel's signature defs as
    TF Serving renders them (the ``SignatureDef`` protos in JSON)."""
    return {
        "model_spec": {"name": meta.name, "signature_name": "", "version": str(meta.version)},
        "metadata": {"signature_def": {"signature_def": meta.signature_defs}},
    }
