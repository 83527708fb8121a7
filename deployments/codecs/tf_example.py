"""``tf.Example`` protos from TF Serving's JSON examples (pure; no TensorFlow:
protobuf's own ``example_pb2``): what ``:classify`` and ``:regress`` feed a
signature whose input is serialized examples.

The JSON mapping is TF Serving's: a number with a fraction or exponent is a
float, a whole number an int64, ``true``/``false`` the int64s 1/0, a string
or ``{"b64": ...}`` bytes; a list holds one kind. Each feature's list is
checked whole (its types in one pass, its numbers' ranges by protobuf or
numpy) and handed to protobuf whole: no Python work per number.

The values are counted (the context's once per example, which carries a copy)
before any is read, and each example is serialized without the context: the
copies are made by :meth:`EncodedExamples.joined`, once their size
(:attr:`EncodedExamples.nbytes`) has been charged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deployments.codecs.tensor import decode_b64, is_b64
from deployments.codecs.tfserving_protos import example_pb2
from deployments.errors import BadRequest, PayloadTooLarge, clip

_INT64 = (-(2**63), 2**63 - 1)
_FLOAT_MAX = float(np.finfo(np.float32).max)
# The kind of feature each JSON type is (a dict: {"b64": ...}).
_KINDS: dict[type, str] = {bool: "int64", int: "int64", float: "float", str: "bytes",
                           dict: "bytes"}


@dataclass(frozen=True)
class EncodedExamples:
    """Each example serialized without the context it shares (``context``:
    the context's ``Example``, serialized, or nothing)."""

    context: bytes
    own: list[bytes]

    @property
    def nbytes(self) -> int:
        """What :meth:`joined` allocates: every example with its copy of the context."""
        return len(self.own) * len(self.context) + sum(map(len, self.own))

    def joined(self) -> list[bytes]:
        """Each example as a serialized ``tf.Example``, the context first
        (two ``features`` fields parse as one merged map, as TF Serving
        sends an ``ExampleListWithContext``)."""
        return [self.context + own for own in self.own]


def encode_examples(examples: list[Any], context: Any, max_elements: int) -> EncodedExamples:
    """JSON examples (and a JSON ``context`` whose features each example
    gets; None: no context) as ``tf.Example`` protos; a feature may not be
    in both. Their values are counted against ``max_elements`` (a 413)
    before any is read."""
    shared = {} if context is None else _features(context, '"context"')
    owns = [_features(example, f'"examples"[{i}]') for i, example in enumerate(examples)]
    for i, own in enumerate(owns):
        if both := shared.keys() & own.keys():
            raise BadRequest(f'"examples"[{i}] repeats features of "context" '
                             f"({', '.join(map(repr, sorted(both)))}): give each in one place")
    values = len(owns) * _count(shared) + sum(map(_count, owns))
    if values > max_elements:
        raise PayloadTooLarge(f"the examples have {values} feature values (the context's "
                              f"counted in each example), the limit is {max_elements}")
    return EncodedExamples(_serialized(shared, '"context"') if shared else b"",
                           [_serialized(own, f'"examples"[{i}]') for i, own in enumerate(owns)])


def _features(document: Any, where: str) -> dict[str, Any]:
    if not isinstance(document, dict) or is_b64(document):
        raise BadRequest(f"{where} must be a JSON object of features")
    return document


def _count(features: dict[str, Any]) -> int:
    return sum(len(v) if isinstance(v, list) else 1 for v in features.values())


def _serialized(features: dict[str, Any], where: str) -> bytes:
    """An ``Example`` of ``features``, serialized (an empty one too: ``features`` is set)."""
    example = example_pb2.Example()
    example.features.SetInParent()
    for name, content in features.items():
        try:
            feature = example.features.feature[name]
        except UnicodeEncodeError:
            raise BadRequest(f"{where} has a feature name that is not valid Unicode") from None
        _fill(feature, content if isinstance(content, list) else [content], name)
    return example.SerializeToString()


def _fill(feature: example_pb2.Feature, values: list[Any], name: str) -> None:
    """``feature``'s list of the kind of ``values`` (none: an empty
    ``Feature``, as TF Serving sends for ``[]``)."""
    if not values:
        return
    types = set(map(type, values))
    kind = _kind(values, types, name)
    if kind == "int64":
        if bool in types:  # protobuf takes no bools for int64s
            values = list(map(int, values))
        try:
            feature.int64_list.value.extend(values)
        except ValueError:  # protobuf's range check
            bad = next(v for v in values if not _INT64[0] <= v <= _INT64[1])
            raise BadRequest(f"feature {name!r}: {clip(str(bad))} does not fit an "
                             "int64") from None
    elif kind == "float":
        outside = np.abs(np.asarray(values, dtype=np.float64)) > _FLOAT_MAX
        if outside.any():
            bad = values[int(outside.argmax())]
            raise BadRequest(f"feature {name!r}: {clip(repr(bad))} does not fit a float "
                             "without loss of precision")
        feature.float_list.value.extend(values)
    else:
        try:
            feature.bytes_list.value.extend([
                v.encode("utf-8") if isinstance(v, str) else decode_b64(v, f"feature {name!r}")
                for v in values])
        except UnicodeEncodeError:
            raise BadRequest(f"feature {name!r} holds text that is not valid Unicode (a lone "
                             "surrogate)") from None


def _kind(values: list[Any], types: set[type], name: str) -> str:
    """The one kind of feature ``values`` (of ``types``) are, or a 400
    naming the first value of no kind or of another kind."""
    if not types <= _KINDS.keys() or (dict in types and not all(
            is_b64(v) for v in values if isinstance(v, dict))):
        bad = next(v for v in values if type(v) not in _KINDS
                   or (isinstance(v, dict) and not is_b64(v)))
        raise BadRequest(f"feature {name!r} has a value of unexpected JSON type "
                         f"({type(bad).__name__}): give numbers, booleans, strings or "
                         '{"b64": ...}, or a flat list of one of them')
    kinds = {_KINDS[t] for t in types}
    if len(kinds) > 1:
        first = _KINDS[type(values[0])]
        other = next(k for v in values if (k := _KINDS[type(v)]) != first)
        raise BadRequest(f"feature {name!r} mixes {first} and {other} values (a feature "
                         "holds one kind)")
    return kinds.pop()
