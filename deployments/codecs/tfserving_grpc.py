"""TensorFlow Serving's gRPC API: ``tensorflow.serving`` messages ↔ numpy
(pure; no Ray, no TensorFlow).

A ``TensorProto`` carries its values either as ``tensor_content`` (the raw
little-endian array, read as a view) or in the typed field of its dtype
(``float_val``, ``int_val``, ``half_val``: float16 bit patterns, ...), where,
as TensorFlow reads them, fewer values than the shape holds are padded with
the last one (one value fills the tensor) and none means zeros. Outputs go
back as ``tensor_content`` (strings as ``string_val``), which
``tf.make_ndarray`` reads. Metadata and status reuse the REST codec's JSON,
which is TF Serving's JSON mapping of the same protos.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from google.protobuf import json_format

from deployments.codecs.tensor import check_rows
from deployments.codecs.tfserving import (
    check_verb,
    classifications,
    examples_input,
    model_metadata,
    model_status,
    regressions,
)
from deployments.codecs.tfserving_protos import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    meta_graph_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from deployments.codecs.v2_tensor import as_bytes, check_shape, element_count
from deployments.errors import BadRequest, ModelFailed, PayloadTooLarge, clip
from deployments.signature import (
    BFLOAT16,
    CLASSIFY,
    REGRESS,
    STRING,
    ModelMetadata,
    TensorSpec,
)
from deployments.versions import VersionStatus

# The dtypes TF Serving's gRPC API carries here, with the typed field that holds each
# and that field's own numpy type.
_DTYPES: dict[int, tuple[np.dtype | str, str, np.dtype | str]] = {
    types_pb2.DT_HALF: (np.dtype("<f2"), "half_val", np.dtype(np.int32)),
    types_pb2.DT_BFLOAT16: (BFLOAT16, "half_val", np.dtype(np.int32)),  # bits, as TF stores
    types_pb2.DT_FLOAT: (np.dtype("<f4"), "float_val", np.dtype(np.float32)),
    types_pb2.DT_DOUBLE: (np.dtype("<f8"), "double_val", np.dtype(np.float64)),
    types_pb2.DT_INT8: (np.dtype("i1"), "int_val", np.dtype(np.int32)),
    types_pb2.DT_INT16: (np.dtype("<i2"), "int_val", np.dtype(np.int32)),
    types_pb2.DT_INT32: (np.dtype("<i4"), "int_val", np.dtype(np.int32)),
    types_pb2.DT_INT64: (np.dtype("<i8"), "int64_val", np.dtype(np.int64)),
    types_pb2.DT_UINT8: (np.dtype("u1"), "int_val", np.dtype(np.int32)),
    types_pb2.DT_UINT16: (np.dtype("<u2"), "int_val", np.dtype(np.int32)),
    types_pb2.DT_UINT32: (np.dtype("<u4"), "uint32_val", np.dtype(np.uint32)),
    types_pb2.DT_UINT64: (np.dtype("<u8"), "uint64_val", np.dtype(np.uint64)),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val", np.dtype(np.bool_)),
    types_pb2.DT_STRING: (STRING, "string_val", STRING),
}
_ENUM_OF = {dtype if dtype == STRING else cast(np.dtype, dtype).name: enum
            for enum, (dtype, _, _) in _DTYPES.items()}
# What a string the message holds costs beyond its bytes and its slot in the
# tensor: its slot in the list read from the message and in the array numpy
# makes of that list, and the bytes object's header.
_STRING_OVERHEAD = 2 * 8 + sys.getsizeof(b"")


def _dtype_name(enum: int) -> str:
    return (types_pb2.DataType.Name(enum) if enum in types_pb2.DataType.values()
            else str(enum))


@dataclass(frozen=True)
class TensorInput:
    """One input as its header declares it: dtype and shape checked, values
    not yet read (reading them may allocate the whole shape; see
    :attr:`decoded_bytes`)."""

    name: str
    proto: tensor_pb2.TensorProto
    dtype: np.dtype | str  # a numpy dtype, or STRING
    shape: tuple[int, ...]

    @property
    def what(self) -> str:
        return f"input {self.name!r}"

    @property
    def decoded_bytes(self) -> int:
        """The peak of :meth:`decode`: nothing for ``tensor_content`` (a view
        of the message); for a typed field, the values read plus the array of
        the whole shape they are padded into; for strings, also each one's
        bytes object (together at most the tensor's message size)."""
        if self.proto.tensor_content:
            return 0
        count, given = element_count(self.shape), self.given
        if self.dtype == STRING:
            return count * 8 + given * _STRING_OVERHEAD + self.proto.ByteSize()
        stored = cast(np.dtype, _DTYPES[self.proto.dtype][2])  # not STRING either
        return count * self._numeric.itemsize + given * stored.itemsize

    @property
    def _numeric(self) -> np.dtype:
        """``dtype``, where it is known not to be STRING."""
        return cast(np.dtype, self.dtype)

    @property
    def given(self) -> int:
        """How many values the typed field holds (without reading them)."""
        return len(getattr(self.proto, _DTYPES[self.proto.dtype][1]))

    def decode(self) -> np.ndarray:
        """The values as an array of ``shape`` (strings: an object array of bytes)."""
        count = element_count(self.shape)
        content = self.proto.tensor_content
        if content:
            if self.dtype == STRING:
                raise BadRequest(f"{self.what}: DT_STRING values go in string_val, not "
                                 "tensor_content")
            if len(content) != count * self._numeric.itemsize:
                raise BadRequest(f"{self.what}: tensor_content has {len(content)} bytes, but "
                                 f"{self._numeric.name}{list(self.shape)} needs "
                                 f"{count * self._numeric.itemsize}")
            return np.frombuffer(content, self.dtype).reshape(self.shape)
        _, field, stored = _DTYPES[self.proto.dtype]
        given = getattr(self.proto, field)
        if len(given) > count:
            raise BadRequest(f"{self.what}: {len(given)} values in {field} for shape "
                             f"{list(self.shape)} ({count} elements)")
        if self.dtype == STRING:
            return _filled(list(given), np.dtype(object), count, b"").reshape(self.shape)
        values = np.fromiter(given, dtype=stored, count=len(given))
        target = np.dtype(np.uint16) if field == "half_val" else self._numeric
        if target.kind in "iu" and values.size and values.dtype != target:
            info = np.iinfo(target)
            if values.min() < info.min or values.max() > info.max:
                raise BadRequest(f"{self.what}: {field} holds values out of range for "
                                 f"{_dtype_name(self.proto.dtype)} ({info.min} to "
                                 f"{info.max})")
        return _filled(values, target, count, 0).view(self.dtype).reshape(self.shape)


def _filled(values: Sequence[object] | np.ndarray, dtype: np.dtype, count: int,
            zero: object) -> np.ndarray:
    """``values`` as ``count`` elements of ``dtype``, padded as TensorFlow pads
    a typed field: with its last value, or with zeros when it has none (one
    array allocated, the values cast as they are copied in)."""
    out = np.empty(count, dtype)
    out[:len(values)] = values
    out[len(values):] = values[-1] if len(values) else zero
    return out


def tensor_input(name: str, proto: tensor_pb2.TensorProto) -> TensorInput:
    """A ``TensorProto``'s header checked: a dtype we take, a known shape."""
    what = f"input {name!r}"
    if proto.dtype not in _DTYPES:
        known = ", ".join(types_pb2.DataType.Name(e) for e in _DTYPES)
        raise BadRequest(f"{what}: dtype {_dtype_name(proto.dtype)} is not supported; use "
                         f"one of {known}")
    if proto.tensor_shape.unknown_rank:
        raise BadRequest(f"{what}: the shape must be known (unknown_rank is set)")
    shape = check_shape([d.size for d in proto.tensor_shape.dim], what)
    return TensorInput(name, proto, _DTYPES[proto.dtype][0], shape)


@dataclass(frozen=True)
class PredictRequest:
    """A ``PredictRequest``'s inputs checked against the limits, not yet read."""

    signature_name: str
    output_filter: tuple[str, ...]
    inputs: list[TensorInput]
    decoded_bytes: int  # the peak of decode (counted with the checks, off the event loop)

    def decode(self) -> dict[str, np.ndarray]:
        """Every input's values, by name (checked against the signature later,
        with the arrays of every other protocol)."""
        return {t.name: t.decode() for t in self.inputs}


def parse_predict_request(message: predict_pb2.PredictRequest, max_rows: int,
                          max_elements: int) -> PredictRequest:
    """Each input's declared rows, its strings (as a V2 BYTES tensor, at most
    ``max_rows``: each becomes a Python object, walked one by one) and the
    elements of all of them checked against the limits (a 413) before any
    value is read: a typed field's single value may declare a shape of any size."""
    if not message.inputs:
        raise BadRequest("the request has no inputs")
    inputs = [tensor_input(name, proto) for name, proto in sorted(message.inputs.items())]
    for tensor in inputs:
        check_rows(tensor.shape[0] if tensor.shape else 1, max_rows, tensor.what)
        if tensor.dtype == STRING and (count := element_count(tensor.shape)) > max_rows:
            raise PayloadTooLarge(f"{tensor.what} has {count} DT_STRING elements, the limit "
                                  f"is {max_rows} (max_rows)")
    elements = sum(element_count(t.shape) for t in inputs)
    if elements > max_elements:
        raise PayloadTooLarge(f"the inputs have {elements} elements, the limit is "
                              f"{max_elements}")
    return PredictRequest(message.model_spec.signature_name, tuple(message.output_filter),
                          inputs, sum(t.decoded_bytes for t in inputs))


def tensor_proto(array: np.ndarray, what: str) -> tensor_pb2.TensorProto:
    """An array as a ``TensorProto`` the way TF Serving answers (TensorFlow's
    ``Tensor::AsProtoField``): every value in its dtype's typed field
    (``float_val``, ``int_val``, float16 bit patterns in ``half_val``...)."""
    proto = tensor_pb2.TensorProto()
    proto.tensor_shape.dim.extend(
        tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape)
    if array.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(as_bytes(array))
        return proto
    enum = _ENUM_OF.get(array.dtype.name)
    if enum is None:
        raise ModelFailed(f"{what} is {array.dtype}, which the TF Serving API here does not "
                          "carry")
    proto.dtype = enum
    _, field, stored = _DTYPES[enum]
    flat = np.ascontiguousarray(array).reshape(-1)
    if field == "half_val":
        flat = flat.view(np.uint16)
    getattr(proto, field).extend(flat.astype(stored, copy=False).tolist())
    return proto


def dtype_enum(dtype: str) -> int | None:
    """The ``DataType`` of a numpy dtype name (or ``string``), if the API carries it."""
    return _ENUM_OF.get(dtype)


def model_spec(meta: ModelMetadata, signature: bool = True) -> model_pb2.ModelSpec:
    """The ``ModelSpec`` of an answer: the model, the version that gave it
    and (but for metadata, as TF Serving) the signature."""
    spec = model_pb2.ModelSpec(name=meta.name,
                               signature_name=meta.signature_name if signature else "")
    spec.version.value = meta.version
    return spec


def encode_predict_response(meta: ModelMetadata, outputs: dict[str, np.ndarray],
                            output_filter: Sequence[str] = ()) -> predict_pb2.PredictResponse:
    """Every output, or those ``output_filter`` names (a 400 for one the
    signature lacks or names twice, as TF Serving)."""
    seen: set[str] = set()
    for alias in output_filter:  # TF Serving's words
        if alias not in outputs:
            raise BadRequest(f"output tensor alias not found in signature: {clip(alias)} "
                             f"Outputs expected to be in the set {{{','.join(sorted(outputs))}}}.")
        if alias in seen:
            raise BadRequest(f"duplicate output tensor alias: {clip(alias)}")
        seen.add(alias)
    response = predict_pb2.PredictResponse(model_spec=model_spec(meta))
    for name in output_filter or outputs:
        response.outputs[name].CopyFrom(tensor_proto(outputs[name], f"output {name!r}"))
    return response


def parse_examples(message: input_pb2.Input, meta: ModelMetadata, verb: str,
                   max_rows: int) -> dict[str, np.ndarray]:
    """A ``Classify``/``Regress`` request's ``tensorflow.serving.Input`` →
    the signature's examples input (a 400 unless ``meta``'s signature fits
    that verb). With a context, each example is serialized after it
    (protobuf merges the two; the example's own features win), as TF
    Serving does."""
    check_verb(meta, verb)
    return examples_input(meta, _checked_examples(message, max_rows))


def _checked_examples(message: input_pb2.Input, max_rows: int) -> list[bytes]:
    """The examples of ``message`` serialized, once there are some and no
    more than ``max_rows``."""
    kind = message.WhichOneof("kind")
    if kind is None:
        raise BadRequest("the request's input has neither example_list nor "
                         "example_list_with_context")
    listed = getattr(message, kind)
    if not listed.examples:
        raise BadRequest(f"the request's {kind} has no examples")
    check_rows(len(listed.examples), max_rows, f"{kind}.examples")
    return serialized_examples(message)


def serialized_examples(message: input_pb2.Input) -> list[bytes]:
    """Each example of ``message`` serialized, after its context if it has
    one (protobuf merges the two; the example's own features win)."""
    kind = message.WhichOneof("kind")
    if kind is None:
        return []
    listed = getattr(message, kind)
    context = listed.context.SerializeToString() if kind == "example_list_with_context" else b""
    return [context + e.SerializeToString() for e in listed.examples]


def examples_bytes(message: input_pb2.Input) -> int:
    """What serializing the examples of :func:`parse_examples` allocates:
    each example with its own copy of the context."""
    kind = message.WhichOneof("kind")
    if kind is None:
        return 0
    listed = getattr(message, kind)
    context = listed.context.ByteSize() if kind == "example_list_with_context" else 0
    return listed.ByteSize() + len(listed.examples) * context


def _classification_result(outputs: dict[str, np.ndarray]
                           ) -> classification_pb2.ClassificationResult:
    return classification_pb2.ClassificationResult(classifications=[
        classification_pb2.Classifications(classes=[
            classification_pb2.Class(label=label, score=score) for label, score in example])
        for example in classifications(outputs)])


def _regression_result(outputs: dict[str, np.ndarray]) -> regression_pb2.RegressionResult:
    return regression_pb2.RegressionResult(
        regressions=[regression_pb2.Regression(value=v) for v in regressions(outputs)])


def encode_classify_response(meta: ModelMetadata, outputs: dict[str, np.ndarray]
                             ) -> classification_pb2.ClassificationResponse:
    return classification_pb2.ClassificationResponse(model_spec=model_spec(meta),
                                                      result=_classification_result(outputs))


def encode_regress_response(meta: ModelMetadata, outputs: dict[str, np.ndarray]
                            ) -> regression_pb2.RegressionResponse:
    return regression_pb2.RegressionResponse(model_spec=model_spec(meta),
                                             result=_regression_result(outputs))


# MultiInference tasks' methods, as TF Serving names them, and our verbs.
TASK_VERBS = {CLASSIFY: "classify", REGRESS: "regress"}


@dataclass(frozen=True)
class Task:
    """One task of a ``MultiInference`` call: a signature, its verb, its examples."""

    meta: ModelMetadata
    verb: str
    inputs: dict[str, np.ndarray]


def parse_multi_inference(message: inference_pb2.MultiInferenceRequest, meta: ModelMetadata,
                          max_rows: int) -> list[Task]:
    """Each task of ``message`` on ``meta``'s version (the first task's model
    spec names it), checked as TF Serving checks them: one model, distinct
    signatures, classify or regress methods; the examples serialized once
    for all of them."""
    if len({t.model_spec.name for t in message.tasks}) > 1:
        raise BadRequest("All ModelSpecs in a MultiInferenceRequest must access the same "
                         "model name.")
    views, seen = [], set()
    for task in message.tasks:
        view = meta.signature(task.model_spec.signature_name)
        if view.signature_name in seen:
            raise BadRequest(f"Duplicate evaluation of signature: {view.signature_name}")
        seen.add(view.signature_name)
        verb = TASK_VERBS.get(task.method_name)
        if verb is None:
            raise BadRequest(f"Unsupported signature method_name: {clip(task.method_name)}")
        check_verb(view, verb)
        views.append((view, verb))
    serialized = _checked_examples(message.input, max_rows)
    return [Task(view, verb, examples_input(view, serialized)) for view, verb in views]


def encode_multi_inference_response(answers: Sequence[tuple[Task, ModelMetadata,
                                                            dict[str, np.ndarray]]]
                                    ) -> inference_pb2.MultiInferenceResponse:
    """One result per task, in the request's order, each with the model spec
    (name, version and signature) that gave it."""
    response = inference_pb2.MultiInferenceResponse()
    for task, meta, outputs in answers:
        result = response.results.add(model_spec=model_spec(meta))
        if task.verb == "classify":
            result.classification_result.CopyFrom(_classification_result(outputs))
        else:
            result.regression_result.CopyFrom(_regression_result(outputs))
    return response


SIGNATURE_DEF = "signature_def"


def signature_def(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                  method_name: str) -> dict[str, Any]:
    """A ``SignatureDef`` as JSON, the way the runner reads one from
    saved_model.pb, for a signature made of others' (a pipeline's)."""
    proto = meta_graph_pb2.SignatureDef(method_name=method_name)
    for specs, infos in ((inputs, proto.inputs), (outputs, proto.outputs)):
        for spec in specs:
            info = infos[spec.name]
            info.name = f"{spec.name}:0"
            info.dtype = _ENUM_OF[spec.dtype]
            for size in spec.shape:
                info.tensor_shape.dim.add(size=-1 if size is None else size)
    return json_format.MessageToDict(proto, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def model_metadata_response(meta: ModelMetadata, fields: Sequence[str]
                            ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """The served ``SignatureDef`` in a ``SignatureDefMap`` packed in an
    ``Any`` under ``"signature_def"``, the one metadata field TF Serving
    has (asked for by name, as TF Serving requires)."""
    if not fields:
        raise BadRequest("GetModelMetadataRequest must name a metadata_field: "
                         f"{SIGNATURE_DEF!r}")
    if other := [f for f in fields if f != SIGNATURE_DEF]:
        raise BadRequest(f"metadata_field {other[0]!r} is not supported: ask for "
                         f"{SIGNATURE_DEF!r}")
    defs = json_format.ParseDict(model_metadata(meta)["metadata"][SIGNATURE_DEF],
                                 get_model_metadata_pb2.SignatureDefMap())
    response = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=model_spec(meta, signature=False))
    response.metadata[SIGNATURE_DEF].Pack(defs)
    return response


def model_status_response(statuses: Sequence[VersionStatus]
                          ) -> get_model_status_pb2.GetModelStatusResponse:
    """Each version's state, highest first; one that failed to load with
    error code UNKNOWN and its message."""
    return json_format.ParseDict(model_status(statuses),
                                 get_model_status_pb2.GetModelStatusResponse())
