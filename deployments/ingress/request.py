"""What a protocol hands the data plane (``dataplane.py``) and gets back:
the :class:`Target` a request names, its inputs (arrays, a Python caller's
``ObjectRef`` objects, encoded images) and the :class:`Answer`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import ray

from deployments.signature import ModelMetadata
from deployments.types import Outputs


@dataclass(frozen=True)
class Target:
    """What a request names: a model (none: the default), a version by
    number or a label (neither: the highest, or the traffic split's pick),
    a signature (none or empty: the one the config names)."""

    model: str | None = None
    version: str | int | None = None
    label: str | None = None
    signature: str | None = None

    @property
    def pinned(self) -> bool:
        """Whether the client named a version or a label: such a request is
        never split and never moves to another version."""
        return self.version is not None or self.label is not None


@dataclass(frozen=True)
class EncodedImages:
    """Encoded images (JPEG, PNG, ...) for the model's image input, decoded
    by the data plane into its input batch."""

    blobs: Sequence[bytes]
    shape: tuple[int, ...] | None = None  # as a tensor of strings declared it, if one did


# What a protocol hands the data plane, by input name.
RequestInputs = Mapping[str, np.ndarray | ray.ObjectRef | EncodedImages]


class Answer(NamedTuple):
    """A model's outputs, and the version that gave them: a request that
    named no version may have followed a redeploy to another one, whose
    labels and outputs its answer must be built from."""

    meta: ModelMetadata
    outputs: Outputs
