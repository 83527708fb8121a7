"""What a model takes and returns, as plain data (no TensorFlow).

The model replica reads these from the SavedModel's serving signature; the
preprocessor uses them to decode images to the right size and to check
tensors before anything is put in the object store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployments.codecs.errors import BadRequest, PayloadTooLarge

Shape = tuple[int | None, ...]

# Which numpy kinds may be cast to which target kinds without surprises:
# bool/int data into a float model is fine, floats into an int model are not.
_CASTABLE_KINDS = {"f": "biuf", "i": "iu", "u": "u", "b": "b"}


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a signature; ``shape[0]`` is the batch dimension."""

    name: str
    dtype: str
    shape: Shape

    def describe(self) -> str:
        dims = ", ".join("N" if i == 0 else ("?" if d is None else str(d))
                         for i, d in enumerate(self.shape))
        return f"{self.dtype}[{dims}]"


@dataclass(frozen=True)
class ImageGeometry:
    """The pixel layout an image must be converted to for the model."""

    height: int
    width: int
    channels: int

    @property
    def pillow_mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"


@dataclass(frozen=True)
class ModelMetadata:
    """Everything the preprocessor needs to know about a served model."""

    name: str
    version: int
    signature_name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    scores_output: str
    labels: tuple[str, ...]
    takes_images: bool = False
    # The served SignatureDef as JSON (TF Serving's metadata API shows it).
    signature_defs: dict[str, Any] = field(default_factory=dict, compare=False)
    # Rows the model's replicas run in one batch (0: unknown); the ingress
    # coalesces requests up to it. Retuned live, so not part of equality.
    max_batch_size: int = field(default=0, compare=False)

    @property
    def input(self) -> TensorSpec:
        """The single input tensor the native routes feed."""
        if len(self.inputs) != 1:
            names = ", ".join(s.name for s in self.inputs)
            raise BadRequest(f"model {self.name!r} has several inputs ({names})")
        return self.inputs[0]

    def image_geometry(self) -> ImageGeometry:
        """The image layout of the input, or a 400 when the model takes no images."""
        spec = self.input
        if not self.takes_images:
            raise BadRequest(
                f"model {self.name!r} takes tensors ({spec.describe()}), not encoded images"
            )
        return image_geometry(spec)


def image_geometry(spec: TensorSpec) -> ImageGeometry:
    """The image layout of ``spec``: float ``[N, height, width, 1 or 3]``, else ValueError."""
    if len(spec.shape) != 4 or spec.shape[3] not in (1, 3) or None in spec.shape[1:]:
        raise ValueError(
            f"input {spec.name!r} is {spec.describe()}, not images ([N, height, width, 1 or 3])"
        )
    if np.dtype(spec.dtype).kind != "f":
        raise ValueError(f"input {spec.name!r} is {spec.describe()}: images are decoded to "
                         "floats in [0, 1], so an image input must be a float type")
    _, height, width, channels = spec.shape
    return ImageGeometry(int(height), int(width), int(channels))


def named_input(inputs: Any, spec: TensorSpec) -> Any:
    """The value of input ``spec`` from ``{name: value}``, or ``inputs`` itself
    when not given by name."""
    if not isinstance(inputs, dict):
        return inputs
    if set(inputs) != {spec.name}:
        names = ", ".join(map(repr, inputs)) or "none"
        raise BadRequest(f"inputs name {names}; the model takes one input, {spec.name!r}")
    return inputs[spec.name]


def check_batch(array: np.ndarray, spec: TensorSpec, max_rows: int | None = None,
                max_elements: int | None = None) -> np.ndarray:
    """Check a batch against ``spec``; cast its dtype if needed (else no copy)."""
    if not isinstance(array, np.ndarray):
        raise BadRequest(f"expected a numpy array for {spec.name!r}, got {type(array).__name__}")
    expected = np.dtype(spec.dtype)
    if array.dtype.kind not in _CASTABLE_KINDS.get(expected.kind, expected.kind):
        raise BadRequest(
            f"input {spec.name!r} has dtype {array.dtype}, expected {spec.describe()}"
        )
    rows_ok = array.ndim == len(spec.shape)
    if rows_ok:
        pairs = zip(spec.shape[1:], array.shape[1:], strict=True)
        rows_ok = all(d is None or d == a for d, a in pairs)
    if not rows_ok:
        raise BadRequest(
            f"input {spec.name!r} has shape {list(array.shape)}, expected {spec.describe()}"
        )
    if array.shape[0] == 0:
        raise BadRequest(f"input {spec.name!r} is an empty batch")
    check_size(spec, array.shape[0], array.size, max_rows, max_elements)
    with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
        checked = np.asarray(array, dtype=expected)
    if expected.kind == "f" and not np.isfinite(checked).all():
        raise BadRequest(
            f"input {spec.name!r} holds NaN or infinite values (or numbers too large "
            f"for {expected})"
        )
    return checked


def check_size(spec: TensorSpec, rows: int, elements: int, max_rows: int | None,
               max_elements: int | None) -> None:
    """A 413 when a request carries more rows or numbers than allowed."""
    if max_rows is not None and rows > max_rows:
        raise PayloadTooLarge(f"input {spec.name!r} has {rows} rows, the limit is {max_rows}")
    if max_elements is not None and elements > max_elements:
        raise PayloadTooLarge(f"input {spec.name!r} has {elements} numbers, the limit is "
                              f"{max_elements}")
