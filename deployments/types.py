"""The plain types every layer shares (numpy only): a request's tensors, a
model's answer, an image's pixel layout. Imports nothing of ours."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A tensor's dimensions as a signature declares them (None: any size).
Shape = tuple[int | None, ...]

# A request's tensors, by input name (every input has the same rows).
Inputs = dict[str, np.ndarray]

# A model's answer, by output name.
Outputs = dict[str, np.ndarray]

# The signature requests that name none get (TF Serving's ``kDefaultServingSignatureDefKey``).
DEFAULT_SIGNATURE = "serving_default"


def rows_of(inputs: Inputs) -> int:
    """The rows of a request (every input has as many; one for a request
    without a batch dimension, which runs alone)."""
    first = next(iter(inputs.values()), None)
    return len(first) if first is not None and first.ndim else 1


@dataclass(frozen=True)
class ImageGeometry:
    """The pixel layout an image must be converted to for the model."""

    height: int
    width: int
    channels: int

    @property
    def pillow_mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"
