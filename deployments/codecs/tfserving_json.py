"""TF Serving's REST answers as JSON text, floats written as TF Serving
writes them (pure; no Ray).

TF Serving does not write a float32 through float64 (``0.1`` would become
``0.10000000149011612``): it writes six significant digits (``%g``), or nine
(float64: seventeen) when six do not read back as the same value, appends
``.0`` to a whole number written without an exponent, and writes ``NaN``,
``Infinity`` and ``-Infinity`` for the non-finite. A client that parses the
answer gets the very doubles it got from TF Serving.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from deployments.codecs.predictions import json_values


class Raw(str):
    """JSON text written as it is."""


def float_texts(values: np.ndarray) -> list[str]:
    """Each value of a float array (flattened) as TF Serving writes it."""
    wide = values.dtype == np.float64
    exact = values.astype(np.float64 if wide else np.float32).ravel()
    doubles = exact.astype(np.float64).tolist()
    texts = [f"{v:.6g}" for v in doubles]
    with np.errstate(invalid="ignore", over="ignore"):
        read_back = np.array(texts, dtype=exact.dtype)
    finite = np.isfinite(exact)
    full = "{:.17g}" if wide else "{:.9g}"
    for i in np.flatnonzero(finite & (read_back != exact)).tolist():
        texts[i] = full.format(doubles[i])
    for i, (text, ok) in enumerate(zip(texts, finite.tolist(), strict=True)):
        if not ok:
            texts[i] = "NaN" if text == "nan" else ("-Infinity" if text[0] == "-" else "Infinity")
        elif "." not in text and "e" not in text:
            texts[i] = text + ".0"
    return texts


def _nest(texts: list[str], shape: tuple[int, ...]) -> str:
    if not shape:
        return texts[0]
    if len(shape) == 1:
        return "[" + ",".join(texts) + "]"
    step = len(texts) // shape[0] if shape[0] else 0
    return "[" + ",".join(_nest(texts[i * step:(i + 1) * step], shape[1:])
                          for i in range(shape[0])) + "]"


def _dumps(value: Any) -> Raw:
    return Raw(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def array_json(name: str, array: np.ndarray) -> Raw:
    """An output as JSON text: floats with TF Serving's digits, anything else
    as its JSON values (``predictions.json_values``)."""
    if array.dtype.kind != "f":
        return _dumps(json_values(name, array))
    return Raw(_nest(float_texts(array), array.shape))


def rows_json(name: str, array: np.ndarray) -> list[Raw]:
    """An output's rows, each as :func:`array_json` writes it."""
    if array.dtype.kind != "f":
        return [_dumps(row) for row in json_values(name, array)]
    texts, per_row = float_texts(array), int(np.prod(array.shape[1:], dtype=np.int64))
    return [Raw(_nest(texts[i * per_row:(i + 1) * per_row], array.shape[1:]))
            for i in range(len(array))]


def float32_json(value: float) -> Raw:
    """A ``float`` proto field (a classification's score, a regression's
    value) as TF Serving writes it."""
    return Raw(float_texts(np.array([value], np.float32))[0])


def render(document: Any) -> bytes:
    """``document`` as compact JSON, :class:`Raw` parts written as they are."""
    parts: list[str] = []
    _write(document, parts)
    return "".join(parts).encode()


def _write(value: Any, parts: list[str]) -> None:
    if isinstance(value, Raw):
        parts.append(value)
    elif isinstance(value, dict):
        parts.append("{")
        for i, (key, item) in enumerate(value.items()):
            parts.append(("," if i else "") + json.dumps(key, ensure_ascii=False) + ":")
            _write(item, parts)
        parts.append("}")
    elif isinstance(value, list | tuple):
        parts.append("[")
        for i, item in enumerate(value):
            if i:
                parts.append(",")
            _write(item, parts)
        parts.append("]")
    else:
        parts.append(_dumps(value))
