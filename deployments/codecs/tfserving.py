"""TensorFlow Serving's REST API: request and response bodies (pure; no Ray).

``:predict`` takes the row format (``"instances"``: each row names every
input) or the columnar format (``"inputs"``: every input's rows by name); a
single-input model's values may also come bare. ``{"b64": "..."}`` values
carry binary strings: for the image input they are encoded images, decoded by
the image codec like any upload.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from deployments.codecs.errors import BadRequest
from deployments.codecs.tensor import JsonInputs, columns_by_input, json_inputs, rows_by_input
from deployments.signature import ModelMetadata


@dataclass(frozen=True)
class PredictRequest:
    """A ``:predict`` body: which signature, which format, and the inputs."""

    signature_name: str | None
    columnar: bool
    inputs: JsonInputs


def parse_predict_request(document: Any, meta: ModelMetadata, max_rows: int) -> PredictRequest:
    """A ``:predict`` body → every input of ``meta``'s signature; the rows are
    counted against ``max_rows`` before any is read."""
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
        values = rows_by_input(document["instances"], meta, max_rows)
        what = '"instances"'
    else:
        values = columns_by_input(document["inputs"], meta, max_rows)
        what = '"inputs"'
    return PredictRequest(signature, not has_rows, json_inputs(values, meta, what))


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
