"""A payload log record (pure; no Ray, no TensorFlow): what one request
asked of a model and what it answered, with each tensor kept as its model's
logging settings say (``full``, ``shape`` only, or ``none``), and a size cap
beyond which a tensor kept in full is summarised instead.

:func:`keep_tensors` runs on the request's path: it only reads shapes,
dtypes and sizes and keeps a reference to the arrays it keeps in full (the
encoders, on the logger's thread, turn them into JSON or protobuf). The
encoders are ``cloudevents.py`` (JSON) and ``prediction_log.py`` (TF
Serving's ``PredictionLog`` in TFRecord files).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from deployments.signature import is_float

# What is kept of one tensor: its values and shape, its shape only, nothing.
Keep = Literal["full", "shape", "none"]
# What a record holds of one tensor: "summary" is a ``full`` tensor over the cap.
Kept = Literal["full", "shape", "summary", "ref"]


@dataclass(frozen=True)
class KeptTensor:
    """One input or output as kept: always its dtype and shape; its values
    when ``kept == "full"``; a ``summary`` (min, max, mean of a numeric
    tensor; its size) when it was asked in full but went over the cap; a
    Python caller's ``ObjectRef`` (``ref``) is neither read nor kept."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    kept: Kept
    values: np.ndarray | None = None
    nbytes: int = 0
    summary: Mapping[str, float] | None = None


@dataclass(frozen=True)
class PayloadRecord:
    """One logged request. ``time``: when it arrived (Unix seconds);
    ``status``: its HTTP status (200, 4xx, 5xx; gRPC callers see the matching
    code); ``error``: the message the caller got, if any."""

    request_id: str
    time: float
    model: str
    version: int | None
    signature: str
    protocol: str
    inputs: tuple[KeptTensor, ...]
    outputs: tuple[KeptTensor, ...]
    latency_s: float
    status: int
    error: str | None = None
    sample_rate: float = 1.0
    forced: bool = False

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def complete(self) -> bool:
        """Every input kept in full: the record can be replayed (warm-up)."""
        return bool(self.inputs) and all(t.kept == "full" for t in self.inputs)


STRING = "string"


def as_dtype(tensor: KeptTensor) -> np.ndarray:
    """A kept tensor's values in the dtype it is recorded with."""
    assert tensor.values is not None
    if tensor.dtype == STRING:
        return tensor.values
    return np.asarray(tensor.values, dtype=tensor.dtype)


def _nbytes(array: np.ndarray) -> int:
    if array.dtype.kind == "O":  # strings: what they hold, not their pointers
        return sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in array.reshape(-1))
    return int(array.nbytes)


def _summary(array: np.ndarray) -> dict[str, float] | None:
    if not (array.dtype.kind in "biu" or is_float(array.dtype)) or array.size == 0:
        return None
    return {"min": float(array.min()), "max": float(array.max()),
            "mean": float(array.mean(dtype=np.float64))}


def keep_tensors(arrays: Mapping[str, object], keep: Mapping[str, Keep], default: Keep,
                 budget: int, dtypes: Mapping[str, str] | None = None
                 ) -> tuple[tuple[KeptTensor, ...], int]:
    """``arrays`` as kept (by name in ``keep``, else ``default``; ``none``:
    left out), tensors kept in full while their bytes fit in ``budget``, the
    rest summarised; and what is left of ``budget``. ``dtypes``: the
    signature's, by name (a request's JSON numbers are cast to them by the
    model's checks; the encoders cast the kept values the same way)."""
    kept: list[KeptTensor] = []
    for name, value in arrays.items():
        mode = keep.get(name, default)
        if mode == "none":
            continue
        if not isinstance(value, np.ndarray):  # an ObjectRef, read in place by the model
            kept.append(KeptTensor(name, "", (), "ref"))
            continue
        array = value
        dtype = (dtypes or {}).get(name) or (
            STRING if array.dtype.kind in "OSU" else array.dtype.name)
        shape = tuple(int(d) for d in array.shape)
        if mode == "shape":
            kept.append(KeptTensor(name, dtype, shape, "shape"))
            continue
        size = _nbytes(array)
        if size <= budget:
            budget -= size
            kept.append(KeptTensor(name, dtype, shape, "full", array, size))
        else:
            kept.append(KeptTensor(name, dtype, shape, "summary", None, size, _summary(array)))
    return tuple(kept), budget
