"""TensorFlow Serving's REST API: request and response bodies (pure; no Ray).

``:predict`` takes the row format (``"instances"``: each row names every
input) or the columnar format (``"inputs"``: every input's rows by name); a
single-input model's values may also come bare. ``{"b64": "..."}`` values
carry binary strings: for the image input they are encoded images, decoded by
the image codec like any upload. ``:classify`` and ``:regress`` take
``"examples"`` (and an optional shared ``"context"``) as ``tf.Example``
features, serialized for the signature's one string input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deployments.codecs.errors import BadRequest, ModelFailed
from deployments.codecs.predictions import json_values
from deployments.codecs.tensor import (
    JsonInputs,
    check_rows,
    columns_by_input,
    json_inputs,
    rows_by_input,
)
from deployments.codecs.tf_example import serialize_examples
from deployments.signature import CLASSIFY, REGRESS, ModelMetadata
from deployments.versions import VersionStatus


@dataclass(frozen=True)
class PredictRequest:
    """A ``:predict`` body: which signature, which format, and the inputs."""

    signature_name: str | None
    columnar: bool
    inputs: JsonInputs


def parse_predict_request(document: Any, meta: ModelMetadata, max_rows: int) -> PredictRequest:
    """A ``:predict`` body → every input of ``meta``'s signature; the rows are
    counted against ``max_rows`` before any is read."""
    signature = _signature_name(document)
    has_rows, has_columns = "instances" in document, "inputs" in document
    if has_rows == has_columns:
        raise BadRequest('the request must have exactly one of "instances" (row format) '
                         'or "inputs" (columnar format)')
    if has_rows:
        values = rows_by_input(document["instances"], meta, max_rows)
        what = '"instances"'
    else:
        values = columns_by_input(document["inputs"], meta, max_rows)
        what = '"inputs"'
    return PredictRequest(signature, not has_rows, json_inputs(values, meta, what))


def _signature_name(document: Any) -> str | None:
    if not isinstance(document, dict):
        raise BadRequest("the request must be a JSON object")
    signature = document.get("signature_name")
    if signature is not None and not isinstance(signature, str):
        raise BadRequest('"signature_name" must be a string')
    return signature


# The verbs a signature's method answers, and the tensors TF Serving's
# classification and regression signatures name (tf.saved_model.*_signature_def).
VERBS = {CLASSIFY: "classify", REGRESS: "regress"}
EXAMPLES_INPUT = "inputs"
CLASSES, SCORES, REGRESSION = "classes", "scores", "outputs"


@dataclass(frozen=True)
class ExamplesRequest:
    """A ``:classify`` or ``:regress`` body: which signature, and the
    examples serialized as ``tf.Example`` protos."""

    signature_name: str | None
    inputs: dict[str, np.ndarray]


def parse_examples_request(document: Any, meta: ModelMetadata, verb: str,
                           max_rows: int) -> ExamplesRequest:
    """A ``:classify``/``:regress`` body → the signature's examples input
    (a 400 unless ``meta``'s method is that verb's); the examples are counted
    against ``max_rows`` before any is read."""
    signature = _signature_name(document)
    check_verb(meta, verb)
    examples = document.get("examples")
    if not isinstance(examples, list) or not examples:
        raise BadRequest('"examples" must be a non-empty list of objects (tf.Example '
                         "features by name)")
    check_rows(len(examples), max_rows, '"examples"')
    return ExamplesRequest(signature,
                           examples_input(serialize_examples(examples, document.get("context"))))


def check_verb(meta: ModelMetadata, verb: str) -> None:
    """A 400 unless ``meta``'s signature is made for ``verb`` (classify, regress)."""
    if VERBS.get(meta.method_name) != verb:
        raise BadRequest(f"model {meta.name!r} serves signature {meta.signature_name!r}, "
                         f"whose method is {meta.method_name!r}, not a {verb} signature: "
                         "use :predict, or serve a signature made for :" + verb)


def examples_input(serialized: list[bytes]) -> dict[str, np.ndarray]:
    """Serialized ``tf.Example`` protos as the examples input of a classify or
    regress signature."""
    array = np.empty(len(serialized), dtype=object)
    array[:] = serialized
    return {EXAMPLES_INPUT: array}


def _floats(array: np.ndarray) -> list[Any]:
    return array.astype(np.float64).tolist()


def classifications(outputs: dict[str, np.ndarray]) -> list[list[tuple[str, float]]]:
    """Per example, its ``(label, score)`` pairs; a signature without labels
    gets ``""``, one without scores 0.0 (as TF Serving fills its
    ``ClassificationResult``)."""
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    rows = len(classes if classes is not None else scores)
    labels = [["" for _ in row] for row in scores] if classes is None else [
        [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row]
        for row in classes.reshape(rows, -1)]
    values = [[0.0] * len(row) for row in labels] if scores is None else _floats(
        scores.reshape(rows, -1))
    return [list(zip(ls, vs, strict=True)) for ls, vs in zip(labels, values, strict=True)]


def regressions(outputs: dict[str, np.ndarray]) -> list[float]:
    """One value per example, from a regression output shaped [N] or [N, 1]."""
    values = outputs[REGRESSION]
    if values.ndim not in (1, 2) or (values.ndim == 2 and values.shape[1] != 1):
        raise ModelFailed(f"the regression output is shaped {list(values.shape)}, not "
                         "[N] or [N, 1]")
    return _floats(values.reshape(-1))


def encode_classify_response(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """``{"results": [[[label, score], ...] per example]}``."""
    return {"results": [[[label, score] for label, score in example]
                        for example in classifications(outputs)]}


def encode_regress_response(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """``{"results": [one value per example]}``."""
    return {"results": regressions(outputs)}


def encode_predict_response(outputs: dict[str, np.ndarray], columnar: bool) -> dict[str, Any]:
    """``{"predictions": [...]}`` per row, or ``{"outputs": ...}`` per output;
    a single output is given bare, several by name, as TF Serving does.
    Non-finite floats stay NaN/Infinity, as TF Serving writes them."""
    if not columnar:
        if any(array.ndim == 0 for array in outputs.values()):
            raise BadRequest("an output has no batch dimension: ask in the columnar format "
                             '("inputs")')
        if len({len(array) for array in outputs.values()}) > 1:
            sizes = ", ".join(f"{name!r} {len(array)}" for name, array in outputs.items())
            raise BadRequest(f"the outputs have different batch sizes ({sizes}): ask in the "
                             'columnar format ("inputs")')
    values = {name: json_values(name, array) for name, array in outputs.items()}
    if columnar:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    rows = len(next(iter(values.values())))
    return {"predictions": [{name: column[i] for name, column in values.items()}
                            for i in range(rows)]}


def model_status(statuses: Sequence[VersionStatus]) -> dict[str, Any]:
    """``GET /v1/models/{name}``: each version's state, highest first; one
    that failed to load carries its error."""
    return {"model_version_status": [
        {"version": str(s.version), "state": s.state,
         "status": {"error_code": "UNKNOWN" if s.error else "OK", "error_message": s.error}}
        for s in sorted(statuses, key=lambda s: s.version, reverse=True)
    ]}


def model_metadata(meta: ModelMetadata) -> dict[str, Any]:
    """``GET /v1/models/{name}/metadata``: the SavedModel's signature defs as
    TF Serving renders them (the ``SignatureDef`` protos in JSON)."""
    return {
        "model_spec": {"name": meta.name, "signature_name": "", "version": str(meta.version)},
        "metadata": {"signature_def": {"signature_def": meta.signature_defs}},
    }
