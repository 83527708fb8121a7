"""A Python caller's own arrays in the object store, passed by input name
(``{"image": ref}``), read where they lie: each a read-only view of this
node's shared memory, not a copy."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import ray
from ray.exceptions import RayError

from deployments.errors import BadRequest


async def read_objects(refs: Mapping[str, ray.ObjectRef]) -> dict[str, Any]:
    """Every object by input name, read at once; a 400 naming the first input
    whose object cannot be read (its owner exited, or it was freed)."""
    values = await asyncio.gather(*refs.values(), return_exceptions=True)
    for name, value in zip(refs, values, strict=True):
        if isinstance(value, RayError):
            raise BadRequest(f"cannot read the ObjectRef given for {name!r}: "
                             f"{type(value).__name__} (the process that put it has exited, "
                             "or it was freed)")
        if isinstance(value, BaseException):
            raise value
    return dict(zip(refs, values, strict=True))
