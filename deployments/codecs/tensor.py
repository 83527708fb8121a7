"""JSON tensors (``{"instances": [...]}``) → numpy, without per-element Python work
beyond what ``json`` and ``numpy`` do."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from deployments.codecs.errors import BadRequest, PayloadTooLarge


def _refuse_constant(name: str) -> None:
    raise BadRequest(f"{name} is not a number JSON allows")


def parse_json(body: bytes) -> Any:
    """Parse a JSON request body or raise a 400 that says where it broke."""
    if not body:
        raise BadRequest("empty request body")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 JSON") from None
    except RecursionError:
        raise BadRequest("JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:  # an integer literal past Python's 4300-digit limit
        raise BadRequest(f"malformed JSON: {exc}") from None


def check_rows(rows: int, max_rows: int, what: str) -> None:
    """A 413 when a list of rows is longer than allowed, before it is read."""
    if rows > max_rows:
        raise PayloadTooLarge(f"{what} has {rows} rows, the limit is {max_rows}")


def instances_to_array(document: Any, max_rows: int) -> np.ndarray:
    """``{"instances": [row, ...]}`` → an array with one row per instance."""
    if not isinstance(document, dict) or "instances" not in document:
        raise BadRequest('expected a JSON object with an "instances" list')
    instances = document["instances"]
    if not isinstance(instances, list):
        raise BadRequest('"instances" must be a list')
    if not instances:
        raise BadRequest('"instances" is empty')
    check_rows(len(instances), max_rows, '"instances"')
    return rows_to_array(instances, '"instances"')


def rows_to_array(rows: list[Any], what: str) -> np.ndarray:
    """Numeric rows → one array, row 0 first; errors name ``what``."""
    try:
        array = np.asarray(rows)
    except ValueError:
        raise BadRequest(f"{what} is ragged: every row must have the same shape") from None
    if array.dtype.kind not in "biuf":
        raise BadRequest(f"{what} must hold only numbers")
    return array
