"""Payload log records as CloudEvents 1.0 (pure; no Ray).

Two shapes:

- **structured** (:func:`structured_event`, :func:`json_line`): one event per
  record, the whole record as its JSON ``data``: the JSON-lines files.
- **binary, as KServe's logger posts** (:func:`kserve_events`): two events
  per record sharing the request id, ``org.kubeflow.serving.inference.request``
  with the inputs and ``org.kubeflow.serving.inference.response`` with the
  outputs (or the error), the attributes as ``Ce-*`` headers (``Ce-Id``,
  ``Ce-Specversion``, ``Ce-Type``, ``Ce-Source``, ``Ce-Time``, KServe's
  extensions ``Ce-Inferenceservicename``, ``Ce-Namespace``, ``Ce-Component``,
  ``Ce-Endpoint``) and the payload as the body: so KServe's collectors
  (message-dumper, its payload-logging examples) read them as they are.

Tensors are KServe V2 tensors (``name``, ``shape``, ``datatype``, ``data``
row-major); one kept by shape only has no ``data``, and its
``parameters.kept`` says so (``shape``, ``summary`` with ``min``/``max``/
``mean`` for one over the size cap, ``ref``). BYTES elements are UTF-8 text
when they are, else ``{"b64": ...}`` (TF Serving's JSON for binary).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from deployments.codecs.payload import KeptTensor, PayloadRecord, as_dtype
from deployments.codecs.v2_tensor import BYTES, as_bytes, datatype_of

SPECVERSION = "1.0"
RECORD_TYPE = "org.tensorflow.serving.payload.record"  # one structured event: a whole record
REQUEST_TYPE = "org.kubeflow.serving.inference.request"  # KServe's logger's types
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
COMPONENT = "predictor"


def _element(value: bytes) -> Any:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode()}


def tensor_json(tensor: KeptTensor) -> dict[str, Any]:
    """One kept tensor as a KServe V2 tensor (see the module's docstring)."""
    datatype = datatype_of(tensor.dtype) if tensor.dtype else BYTES
    body: dict[str, Any] = {"name": tensor.name, "shape": list(tensor.shape),
                            "datatype": datatype}
    if tensor.kept == "full":
        values = as_dtype(tensor)
        body["data"] = ([_element(v) for v in as_bytes(values)] if datatype == BYTES
                        else values.reshape(-1).tolist())
    else:
        parameters: dict[str, Any] = {"kept": tensor.kept}
        if tensor.kept == "summary":
            parameters["nbytes"] = tensor.nbytes
            parameters.update(tensor.summary or {})
        body["parameters"] = parameters
    return body


def timestamp(seconds: float) -> str:
    """RFC 3339, UTC, microseconds (CloudEvents' ``time``)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


def record_json(record: PayloadRecord) -> dict[str, Any]:
    """The whole record as JSON (a structured event's ``data``)."""
    return {
        "id": record.request_id, "time": timestamp(record.time), "model_name": record.model,
        "model_version": None if record.version is None else str(record.version),
        "signature_name": record.signature, "protocol": record.protocol,
        "status": record.status, "error": record.error,
        "latency_ms": round(record.latency_s * 1e3, 3),
        "sample_rate": record.sample_rate, "forced": record.forced,
        "inputs": [tensor_json(t) for t in record.inputs],
        "outputs": [tensor_json(t) for t in record.outputs],
    }


def _extensions(record: PayloadRecord, namespace: str) -> dict[str, str]:
    """KServe's extension attributes, and ours (lower-case letters and digits)."""
    return {"inferenceservicename": record.model, "namespace": namespace,
            "component": COMPONENT, "endpoint": "",
            "modelversion": "" if record.version is None else str(record.version),
            "signature": record.signature, "protocol": record.protocol,
            "status": str(record.status)}


def structured_event(record: PayloadRecord, source: str, namespace: str = "") -> dict[str, Any]:
    """One record as a structured CloudEvent (``application/cloudevents+json``)."""
    return {"specversion": SPECVERSION, "id": record.request_id, "source": source,
            "type": RECORD_TYPE, "time": timestamp(record.time),
            "datacontenttype": "application/json", **_extensions(record, namespace),
            "data": record_json(record)}


def json_line(record: PayloadRecord, source: str, namespace: str = "") -> bytes:
    """One record as a line of a JSON-lines file."""
    return json.dumps(structured_event(record, source, namespace),
                      separators=(",", ":")).encode() + b"\n"


def kserve_events(record: PayloadRecord, source: str, namespace: str = ""
                  ) -> list[tuple[dict[str, str], bytes]]:
    """The record as KServe's logger posts it: a request event and a response
    event, each ``(headers, body)`` in CloudEvents' binary HTTP mode."""
    common = {"ce-specversion": SPECVERSION, "ce-id": record.request_id, "ce-source": source,
              "ce-time": timestamp(record.time), "content-type": "application/json",
              **{f"ce-{k}": v for k, v in _extensions(record, namespace).items()}}
    request = {"inputs": [tensor_json(t) for t in record.inputs]}
    response: dict[str, Any] = (
        {"model_name": record.model, "id": record.request_id,
         "outputs": [tensor_json(t) for t in record.outputs]}
        if record.error is None else {"error": record.error})
    if record.version is not None and record.error is None:
        response["model_version"] = str(record.version)
    latency = {"ce-latencyms": f"{record.latency_s * 1e3:.3f}"}
    return [({**common, "ce-type": REQUEST_TYPE}, json.dumps(request).encode()),
            ({**common, **latency, "ce-type": RESPONSE_TYPE}, json.dumps(response).encode())]
