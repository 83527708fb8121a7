"""What every number of the configuration must be: finite, and within what a
server can mean. A value beyond is refused when the config is parsed, and
pydantic's error names the field (``models.0.preprocessing.range.1``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

# Every config model's settings: unknown keys refused, ``.inf`` and ``.nan``
# refused in every float field (nested tuples included), frozen.
STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

INT64_MAX = 2**63 - 1

# Sizes in bytes, of memory or of a node's disk cache: up to 1 TiB.
Bytes = Annotated[int, Field(gt=0, le=2**40)]
# Things counted per request or per model (rows, numbers, pixels, classes, versions kept).
Count = Annotated[int, Field(gt=0, le=2**31 - 1)]
# A model version: TF Serving's are int64.
Version = Annotated[int, Field(gt=0, le=INT64_MAX)]
# A tensor dimension, at most int64's as TensorFlow's (-1: any size).
Dim = Annotated[int, Field(le=INT64_MAX)]
# An image side in pixels.
Side = Annotated[int, Field(gt=0, le=2**15)]
# A duration: up to a day (asyncio and Serve overflow long before ``.inf``).
Seconds = Annotated[float, Field(ge=0, le=86400)]
