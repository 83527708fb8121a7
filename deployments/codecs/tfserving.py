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
from typing import Any, cast

import numpy as np

from deployments.codecs.tensor import (
    JsonInputs,
    check_rows,
    columns_by_input,
    json_inputs,
    rows_by_input,
)
from deployments.codecs.tf_example import EncodedExamples, encode_examples
from deployments.codecs.tfserving_json import array_json, float32_json, render, rows_json
from deployments.errors import BadRequest, ModelFailed
from deployments.signature import STRING, ModelMetadata
from deployments.versions import VersionStatus


@dataclass(frozen=True)
class PredictRequest:
    """A ``:predict`` body: which format, and the inputs."""

    columnar: bool
    inputs: JsonInputs


def parse_predict_request(document: Any, meta: ModelMetadata, max_rows: int) -> PredictRequest:
    """A ``:predict`` body → every input of ``meta``'s signature (the one the
    body names: :func:`signature_name`); the rows are counted against
    ``max_rows`` before any is read."""
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
    return PredictRequest(not has_rows, json_inputs(values, meta, what))


def signature_name(document: Any) -> str | None:
    """The signature a body names (none: the model's default)."""
    if not isinstance(document, dict):
        raise BadRequest("the request must be a JSON object")
    signature = document.get("signature_name")
    if signature is not None and not isinstance(signature, str):
        raise BadRequest('"signature_name" must be a string')
    return signature


# The tensors TF Serving's classification and regression signatures name
# (tf.saved_model.*_signature_def).
CLASSES, SCORES, REGRESSION = "classes", "scores", "outputs"


def parse_examples_request(document: Any, meta: ModelMetadata, verb: str, max_rows: int,
                           max_elements: int) -> EncodedExamples:
    """A ``:classify``/``:regress`` body → its examples encoded (a 400 unless
    ``meta``'s signature fits that verb), not yet joined with the context
    (:func:`examples_input` of their ``joined()``, once their ``nbytes`` is
    charged); the examples are counted against ``max_rows`` and their values
    against ``max_elements`` before any is read."""
    check_verb(meta, verb)
    examples = document.get("examples")
    if not isinstance(examples, list) or not examples:
        raise BadRequest('"examples" must be a non-empty list of objects (tf.Example '
                         "features by name)")
    check_rows(len(examples), max_rows, '"examples"')
    return encode_examples(examples, document.get("context"), max_elements)


def check_verb(meta: ModelMetadata, verb: str) -> None:
    """A 400 unless ``meta``'s signature fits ``verb`` as TF Serving checks
    it: one string input (serialized examples) and the outputs of a
    classification (``classes`` and/or ``scores``) or a regression
    (``outputs``). Its method name is not checked: TF2 SavedModels write
    every signature as a predict one (TF Serving's
    ``--enable_signature_method_name_check`` is off by default)."""
    where = (f"signature {meta.signature_name!r} of model {meta.name!r} takes "
             f"{meta.describe_inputs() or 'nothing'} and outputs "
             f"{', '.join(repr(o.name) for o in meta.outputs)}: not a {verb} signature")
    if len(meta.inputs) != 1:
        raise BadRequest(f"Expected one input Tensor. ({where})")
    if meta.inputs[0].dtype != STRING:
        raise BadRequest(f"{where} (it takes no serialized tf.Example protos); use :predict")
    names = {o.name for o in meta.outputs}
    if verb == "classify" and (len(names) > 2 or not names & {CLASSES, SCORES}):
        raise BadRequest('Expected classification signature outputs to contain at least one '
                         f'of "classes" or "scores" (and at most two outputs). ({where})')
    if verb == "regress" and names != {REGRESSION}:
        raise BadRequest(f"Expected one output Tensor named {REGRESSION!r}. ({where})")


def examples_input(meta: ModelMetadata, serialized: list[bytes]) -> dict[str, np.ndarray]:
    """Serialized ``tf.Example`` protos as the one input of ``meta``'s
    classify or regress signature (checked by :func:`check_verb`)."""
    array = np.empty(len(serialized), dtype=object)
    array[:] = serialized
    return {meta.inputs[0].name: array}


def _floats(array: np.ndarray) -> list[Any]:
    return array.astype(np.float64).tolist()


def classifications(outputs: dict[str, np.ndarray]) -> list[list[tuple[str, float]]]:
    """Per example, its ``(label, score)`` pairs; a signature without labels
    gets ``""``, one without scores 0.0 (as TF Serving fills its
    ``ClassificationResult``)."""
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    if classes is None and scores is None:  # postprocess code dropped both
        raise ModelFailed("the classification has neither a classes nor a scores output")
    rows = len(classes if classes is not None else cast(np.ndarray, scores))
    labels = [["" for _ in row] for row in cast(np.ndarray, scores)] if classes is None else [
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


def encode_classify_response(outputs: dict[str, np.ndarray]) -> bytes:
    """``{"results": [[[label, score], ...] per example]}``."""
    return render({"results": [[[label, float32_json(score)] for label, score in example]
                               for example in classifications(outputs)]})


def encode_regress_response(outputs: dict[str, np.ndarray]) -> bytes:
    """``{"results": [one value per example]}``."""
    return render({"results": [float32_json(v) for v in regressions(outputs)]})


def encode_predict_response(outputs: dict[str, np.ndarray], columnar: bool) -> bytes:
    """``{"predictions": [...]}`` per row, or ``{"outputs": ...}`` per output;
    a single output is given bare, several by name, as TF Serving does, its
    floats written as TF Serving writes them (``tfserving_json``)."""
    if not columnar:  # TF Serving's words, and our advice
        first = None
        for name, array in outputs.items():
            if array.ndim == 0:
                raise BadRequest(f"Tensor name: {name} has no shape information (ask in "
                                 'the columnar format, "inputs", for outputs without a batch '
                                 "dimension)")
            if first is not None and len(array) != first:
                raise BadRequest(f"Tensor name: {name} has inconsistent batch size: "
                                 f"{len(array)} expecting: {first} (ask in the columnar "
                                 'format, "inputs")')
            first = len(array)
    if columnar:
        values = {name: array_json(name, array) for name, array in outputs.items()}
        return render({"outputs": next(iter(values.values())) if len(values) == 1 else values})
    columns = {name: rows_json(name, array) for name, array in outputs.items()}
    if len(columns) == 1:
        return render({"predictions": next(iter(columns.values()))})
    rows = len(next(iter(columns.values())))
    return render({"predictions": [{name: column[i] for name, column in columns.items()}
                                   for i in range(rows)]})


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
