"""KServe V2 over gRPC: ``inference.GRPCInferenceService`` messages ↔ the
tensors of :mod:`deployments.codecs.v2_tensor` (pure; no Ray, no TensorFlow).

The protobuf classes are the ones ``tritonclient`` generates from the
protocol's ``grpc_service.proto``, so its clients speak to us unmodified.
``raw_input_contents`` become numpy views of the message's bytes; outputs
are always sent as ``raw_output_contents``, as Triton does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from deployments.codecs.v2_tensor import (
    BYTES,
    InferRequest,
    OutputTensor,
    RequestedOutput,
    Tensor,
    as_datatype,
    check_datatype,
    check_shape,
    check_tensor_size,
    element_count,
    model_metadata,
    raw_to_tensor,
    tensor_to_raw,
)
from deployments.errors import BadRequest
from deployments.signature import ModelMetadata

# Which typed ``InferTensorContents`` field holds each datatype.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", BYTES: "bytes_contents",
}


def _parameter(params: Any, key: str) -> Any:
    """One ``InferParameter``'s value (``None``: not given)."""
    if key not in params:
        return None
    kind = params[key].WhichOneof("parameter_choice")
    return getattr(params[key], kind) if kind else None


def _input(tensor: pb.ModelInferRequest.TensorTensor, raw: bytes | None, max_rows: int,
           max_elements: int) -> Tensor:
    what = f"input {tensor.name!r}"
    if not tensor.name:
        raise BadRequest("every input needs a name")
    datatype = check_datatype(tensor.datatype, what)
    shape = check_shape(list(tensor.shape), what)
    check_tensor_size(what, datatype, shape, max_rows, max_elements)
    if raw is not None:
        return Tensor(tensor.name, datatype, shape, raw_to_tensor(raw, datatype, shape, what))
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise BadRequest(f"{what}: {datatype} data must come in raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != element_count(shape):
        raise BadRequest(f"{what}: {len(values)} elements for shape {list(shape)}")
    if datatype == BYTES:
        return Tensor(tensor.name, datatype, shape, list(values))
    array = np.asarray(values)
    return Tensor(tensor.name, datatype, shape, as_datatype(array, datatype, shape, what))


def parse_infer_request(message: pb.ModelInferRequest, max_rows: int,
                        max_elements: int) -> InferRequest:
    """A ``ModelInferRequest`` → tensors. Raw contents are viewed, not copied;
    each tensor's declared size is checked against the limits first."""
    raws = list(message.raw_input_contents)
    if raws and len(raws) != len(message.inputs):
        raise BadRequest(f"{len(raws)} raw_input_contents for {len(message.inputs)} inputs")
    if not message.inputs:
        raise BadRequest("the request has no inputs")
    inputs = [_input(t, raws[i] if raws else None, max_rows, max_elements)
              for i, t in enumerate(message.inputs)]
    outputs = None
    if message.outputs:
        outputs = []
        for out in message.outputs:
            classes = _parameter(out.parameters, "classification") or 0
            if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
                raise BadRequest(f"output {out.name!r}: classification must be a class count")
            outputs.append(RequestedOutput(out.name, classification=classes))
    signature = _parameter(message.parameters, "signature_name")
    if signature is not None and not isinstance(signature, str):
        raise BadRequest("the signature_name parameter must be a string")
    return InferRequest(inputs=inputs, outputs=outputs, id=message.id or None,
                        signature_name=signature)


def encode_infer_response(meta: ModelMetadata, request_id: str | None,
                          outputs: list[OutputTensor]) -> pb.ModelInferResponse:
    return pb.ModelInferResponse(
        model_name=meta.name, model_version=str(meta.version), id=request_id or "",
        outputs=[pb.ModelInferResponse.InferOutputTensor(
            name=o.name, datatype=o.datatype, shape=list(o.shape)) for o in outputs],
        raw_output_contents=[tensor_to_raw(o) for o in outputs],
    )


def model_metadata_response(meta: ModelMetadata,
                            versions: list[int]) -> pb.ModelMetadataResponse:
    document = model_metadata(meta, versions)

    def tensor(entry: dict[str, Any]) -> pb.ModelMetadataResponse.TensorMetadata:
        return pb.ModelMetadataResponse.TensorMetadata(
            name=entry["name"], datatype=entry["datatype"], shape=entry["shape"])

    return pb.ModelMetadataResponse(
        name=document["name"], versions=document["versions"], platform=document["platform"],
        inputs=[tensor(t) for t in document["inputs"]],
        outputs=[tensor(t) for t in document["outputs"]],
    )
