"""``tf.Example`` protos from TF Serving's JSON examples, serialized by hand
(pure; no TensorFlow, no protobuf runtime): what ``:classify`` and
``:regress`` feed a signature whose input is serialized examples.

The JSON mapping is TF Serving's: a number with a fraction or exponent is a
float, a whole number an int64, ``true``/``false`` the int64s 1/0, a string
or ``{"b64": ...}`` bytes; a list holds one kind. The encoding is protobuf's
wire format for ``Example {Features features = 1}``, ``Features {map<string,
Feature> feature = 1}`` and ``Feature {oneof: BytesList bytes_list = 1;
FloatList float_list = 2; Int64List int64_list = 3}`` (numbers packed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deployments.codecs.errors import BadRequest, clip
from deployments.codecs.tensor import decode_b64, is_b64

_INT64 = (-(2**63), 2**63 - 1)
_FLOAT_MAX = float(np.finfo(np.float32).max)
_KINDS = {1: "bytes", 2: "float", 3: "int64"}


def _varint(value: int) -> bytes:
    value &= 0xFFFF_FFFF_FFFF_FFFF  # negative int64s: ten bytes, as protobuf writes them
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _kind_and_value(value: Any, name: str) -> tuple[int, bytes | float | int]:
    if isinstance(value, bool):
        return 3, int(value)
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise BadRequest(f"feature {name!r}: {clip(str(value))} does not fit an int64")
        return 3, value
    if isinstance(value, float):
        if abs(value) > _FLOAT_MAX:
            raise BadRequest(f"feature {name!r}: {clip(repr(value))} does not fit a float "
                             "without loss of precision")
        return 2, value
    if isinstance(value, str):
        try:
            return 1, value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"feature {name!r} holds text that is not valid Unicode (a lone "
                             "surrogate)") from None
    if is_b64(value):
        return 1, decode_b64(value, f"feature {name!r}")
    raise BadRequest(f"feature {name!r} has a value of unexpected JSON type "
                     f"({type(value).__name__}): give numbers, booleans, strings or "
                     '{"b64": ...}, or a flat list of one of them')


def _feature(content: Any, name: str) -> bytes:
    """One ``Feature``: a value or a flat list of values of one kind."""
    values = content if isinstance(content, list) else [content]
    if not values:
        return b""  # an empty Feature, as TF Serving sends for []
    kinds, items = zip(*(_kind_and_value(v, name) for v in values), strict=True)
    kind = kinds[0]
    if any(k != kind for k in kinds):
        other = next(k for k in kinds if k != kind)
        raise BadRequest(f"feature {name!r} mixes {_KINDS[kind]} and {_KINDS[other]} values "
                         "(a feature holds one kind)")
    if kind == 1:
        listed = b"".join(_field(1, item) for item in items)
    elif kind == 2:
        listed = _field(1, np.asarray(items, dtype="<f4").tobytes())
    else:
        listed = _field(1, b"".join(_varint(item) for item in items))
    return _field(kind, listed)


def features_bytes(document: Any, where: str) -> bytes:
    """The ``Features`` field of an Example, serialized, from a JSON object of
    ``{feature name: value or list}``."""
    if not isinstance(document, dict) or is_b64(document):
        raise BadRequest(f"{where} must be a JSON object of features")
    return b"".join(_field(1, _field(1, _name(name, where)) + _field(2, _feature(value, name)))
                    for name, value in document.items())


def _name(name: str, where: str) -> bytes:
    try:
        return name.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{where} has a feature name that is not valid Unicode") from None


def serialize_examples(examples: list[Any], context: Any = None) -> list[bytes]:
    """Each JSON example as a serialized ``tf.Example``, with ``context``'s
    features in every one (TF Serving's ``ExampleListWithContext``); a feature
    may not be in both."""
    shared = b""
    if context is not None:
        shared = features_bytes(context, '"context"')
    serialized = []
    for i, example in enumerate(examples):
        own = features_bytes(example, f'"examples"[{i}]')
        if context is not None and (both := set(context) & set(example)):
            raise BadRequest(f'"examples"[{i}] repeats features of "context" '
                             f"({', '.join(map(repr, sorted(both)))}): give each in one place")
        # Two Features fields parse as one merged map: context, then the example's own.
        serialized.append(_field(1, shared) + _field(1, own) if shared else _field(1, own))
    return serialized
