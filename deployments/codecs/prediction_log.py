"""Payload log records as TF Serving's ``PredictionLog`` in TFRecord files
(pure; no Ray, no TensorFlow: the protos load without it, the framing's
CRC is ``google_crc32c``).

A record becomes a ``predict_log``: its request (the model, version and
signature, the inputs as kept) and its response (the outputs as kept), with
``log_metadata`` naming the model and the sampling rate, as TF Serving's own
request logger writes them. Numeric tensors kept in full go as
``tensor_content`` (``tf.make_ndarray`` and our warm-up read it), strings as
``string_val``; a tensor kept by shape only (or summarised) has its dtype
and shape and no values, which TensorFlow reads as zeros: such records are
left out of warm-up files (:func:`replayable`). What a ``PredictionLog`` has
no field for (the request id, time, latency, status, error) is in the
JSON-lines format only.

TFRecord framing: ``length`` (u64 LE), ``masked_crc32c(length)`` (u32 LE),
``data``, ``masked_crc32c(data)`` (u32 LE); the mask is TensorFlow's
(``crc >> 15 | crc << 17``, plus ``0xa282ead8``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import google_crc32c
import numpy as np

from deployments.codecs.payload import STRING, KeptTensor, PayloadRecord, as_dtype
from deployments.codecs.tfserving_grpc import dtype_enum
from deployments.codecs.tfserving_protos import (
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from deployments.codecs.v2_tensor import as_bytes

_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """TensorFlow's masked CRC-32C of ``data`` (TFRecord's checksums)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: ``data`` framed with its length and checksums."""
    length = struct.pack("<Q", len(data))
    return b"".join((length, struct.pack("<I", masked_crc32c(length)), data,
                     struct.pack("<I", masked_crc32c(data))))


class CorruptRecord(ValueError):
    """A TFRecord file whose framing or checksums do not hold (or that ends early)."""


def read_tfrecords(stream: BinaryIO) -> Iterator[bytes]:
    """The records of a TFRecord file, checksums checked."""
    index = 0
    while header := stream.read(12):
        if len(header) < 12:
            raise CorruptRecord(f"record {index}: truncated header")
        length_bytes, (length_crc,) = header[:8], struct.unpack("<I", header[8:])
        if masked_crc32c(length_bytes) != length_crc:
            raise CorruptRecord(f"record {index}: corrupt length")
        (length,) = struct.unpack("<Q", length_bytes)
        data = stream.read(length)
        footer = stream.read(4)
        if len(data) < length or len(footer) < 4:
            raise CorruptRecord(f"record {index}: truncated data")
        if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
            raise CorruptRecord(f"record {index}: corrupt data")
        yield data
        index += 1


def tensor_proto(tensor: KeptTensor) -> tensor_pb2.TensorProto:
    """A kept tensor as a ``TensorProto`` (values only when kept in full)."""
    proto = tensor_pb2.TensorProto()
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in tensor.shape]))
    proto.dtype = dtype_enum(tensor.dtype) or types_pb2.DT_INVALID
    if tensor.kept != "full":
        return proto
    values = as_dtype(tensor)
    if tensor.dtype == STRING:
        proto.string_val.extend(as_bytes(values))
    else:
        proto.tensor_content = np.ascontiguousarray(
            values, dtype=values.dtype.newbyteorder("<")).tobytes()
    return proto


def _spec(record: PayloadRecord) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=record.model, signature_name=record.signature)
    if record.version is not None:
        spec.version.value = record.version
    return spec


def prediction_log(record: PayloadRecord) -> prediction_log_pb2.PredictionLog:
    """A record as TF Serving's ``PredictionLog`` (a ``predict_log``)."""
    log = prediction_log_pb2.PredictionLog()
    log.log_metadata.model_spec.CopyFrom(_spec(record))
    log.log_metadata.sampling_config.sampling_rate = record.sample_rate
    request = predict_pb2.PredictRequest(model_spec=_spec(record))
    for tensor in record.inputs:
        if tensor.kept != "ref":
            request.inputs[tensor.name].CopyFrom(tensor_proto(tensor))
    log.predict_log.request.CopyFrom(request)
    if record.error is None:
        response = predict_pb2.PredictResponse(model_spec=_spec(record))
        for tensor in record.outputs:
            if tensor.kept != "ref":
                response.outputs[tensor.name].CopyFrom(tensor_proto(tensor))
        log.predict_log.response.CopyFrom(response)
    return log


def encode(record: PayloadRecord) -> bytes:
    """A record as one TFRecord of its ``PredictionLog``."""
    return tfrecord(prediction_log(record).SerializeToString())


def _has_values(proto: tensor_pb2.TensorProto) -> bool:
    elements = int(np.prod([d.size for d in proto.tensor_shape.dim]))
    if elements == 0 or proto.tensor_content:
        return True
    return any(field.name.endswith("_val") for field, _ in proto.ListFields())


def replayable(log: prediction_log_pb2.PredictionLog, model: str | None = None) -> bool:
    """Whether a logged ``PredictionLog`` can warm a version up: a predict
    log (of ``model``, if named) that was answered and holds every input's
    values."""
    if log.WhichOneof("log_type") != "predict_log":
        return False
    request = log.predict_log.request
    if model is not None and request.model_spec.name != model:
        return False
    if not request.inputs or not log.predict_log.HasField("response"):
        return False
    return all(_has_values(t) for t in request.inputs.values())


def warmup_log(log: prediction_log_pb2.PredictionLog) -> prediction_log_pb2.PredictionLog:
    """A logged ``PredictionLog`` as a warm-up record: the request only, with
    no version (warm-up runs on whichever version the file is in)."""
    warm = prediction_log_pb2.PredictionLog()
    request = warm.predict_log.request
    request.CopyFrom(log.predict_log.request)
    request.model_spec.ClearField("version")
    request.model_spec.ClearField("version_label")
    return warm


def write_tfrecords(stream: BinaryIO, records: Iterable[bytes]) -> int:
    """``records`` framed into ``stream``; how many."""
    count = 0
    for data in records:
        stream.write(tfrecord(data))
        count += 1
    return count
