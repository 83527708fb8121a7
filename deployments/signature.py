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
from deployments.preprocessing import DEFAULT, ImagePreprocessing

# Which numpy kinds may be cast to which target kinds without surprises:
# bool/int data into a float model is fine, floats into an int model are
# not; ints go into unsigned inputs when their values fit (checked).
_CASTABLE_KINDS = {"f": "biuf", "i": "iu", "u": "iu", "b": "b"}

Shape = tuple[int | None, ...]

# A request's tensors, by input name (every input has the same rows).
Inputs = dict[str, np.ndarray]

# The dtype name of string tensors (``tf.string``): numpy object arrays of bytes.
STRING = "string"


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a signature; ``shape[0]`` is the batch dimension."""

    name: str
    dtype: str  # a numpy dtype name, or STRING
    shape: Shape

    def describe(self) -> str:
        dims = ", ".join("N" if i == 0 else ("?" if d is None else str(d))
                         for i, d in enumerate(self.shape))
        return f"{self.dtype}[{dims}]"

    @property
    def variable(self) -> bool:
        """Whether a dimension after the batch is left open (a sequence length, say)."""
        return None in self.shape[1:]


@dataclass(frozen=True)
class ImageGeometry:
    """The pixel layout an image must be converted to for the model."""

    height: int
    width: int
    channels: int

    @property
    def pillow_mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"


# A signature's method, as TF Serving names it (``:classify``, ``:regress``).
PREDICT, CLASSIFY, REGRESS = ("tensorflow/serving/predict", "tensorflow/serving/classify",
                              "tensorflow/serving/regress")


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
    image_input: str | None = None  # the input encoded images are decoded into
    method_name: str = PREDICT
    # The served SignatureDef as JSON (TF Serving's metadata API shows it).
    signature_defs: dict[str, Any] = field(default_factory=dict, compare=False)
    # Rows the model's replicas run in one batch (0: unknown); the ingress
    # coalesces requests up to it. Retuned live, so not part of equality.
    max_batch_size: int = field(default=0, compare=False)
    # How encoded images become the image input's values (the model's config).
    preprocessing: ImagePreprocessing = DEFAULT

    @property
    def takes_images(self) -> bool:
        return self.image_input is not None

    def spec(self, name: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.name == name), None)

    def describe_inputs(self) -> str:
        return ", ".join(f"{s.name!r}: {s.describe()}" for s in self.inputs)

    @property
    def single_input(self) -> TensorSpec:
        """The one input, for requests that give a value without its name."""
        if len(self.inputs) != 1:
            raise BadRequest(f"model {self.name!r} takes several inputs "
                             f"({self.describe_inputs()}): give each by name")
        return self.inputs[0]

    def image_spec(self) -> TensorSpec:
        """The input images go into, or a 400 when the model takes no images."""
        spec = self.spec(self.image_input) if self.image_input else None
        if spec is None:
            raise BadRequest(f"model {self.name!r} takes tensors ({self.describe_inputs()}), "
                             "not encoded images")
        return spec

    def image_geometry(self) -> ImageGeometry:
        """The image layout of the image input, or a 400 when the model takes none."""
        return image_geometry(self.image_spec())


def image_geometry(spec: TensorSpec) -> ImageGeometry:
    """The image layout of ``spec``: float ``[N, height, width, 1 or 3]``, else ValueError."""
    if len(spec.shape) != 4 or spec.shape[3] not in (1, 3) or None in spec.shape[1:]:
        raise ValueError(
            f"input {spec.name!r} is {spec.describe()}, not images ([N, height, width, 1 or 3])"
        )
    if spec.dtype == STRING or np.dtype(spec.dtype).kind != "f":
        raise ValueError(f"input {spec.name!r} is {spec.describe()}: images are decoded to "
                         "floats, so an image input must be a float type")
    _, height, width, channels = spec.shape
    return ImageGeometry(int(height), int(width), int(channels))


def by_name(inputs: Any, meta: ModelMetadata) -> dict[str, Any]:
    """``{name: value}`` as given, or a bare value as the one input's."""
    if isinstance(inputs, dict):
        return inputs
    return {meta.single_input.name: inputs}


def check_input_names(inputs: dict[Any, Any], meta: ModelMetadata, where: str) -> None:
    """A 400 unless ``inputs`` names exactly the signature's inputs."""
    expected = [s.name for s in meta.inputs]
    if set(inputs) != set(expected):
        missing = [n for n in expected if n not in inputs]
        unknown = sorted(map(str, set(inputs) - set(expected)))
        said = "; ".join(filter(None, [missing and f"missing {', '.join(map(repr, missing))}",
                                       unknown and f"unknown {', '.join(map(repr, unknown))}"]))
        raise BadRequest(f"{where} names inputs the model does not take ({said}); model "
                         f"{meta.name!r} takes {meta.describe_inputs()}")


def check_inputs(inputs: dict[str, Any], meta: ModelMetadata, max_rows: int | None = None,
                 max_elements: int | None = None) -> Inputs:
    """Every input of ``meta``'s signature, each checked against its spec and
    cast to its dtype if needed (else not copied); all with the same rows."""
    check_input_names(inputs, meta, "the request")
    checked = {spec.name: check_tensor(inputs[spec.name], spec) for spec in meta.inputs}
    rows = {name: len(array) for name, array in checked.items()}
    if len(set(rows.values())) > 1:
        counts = ", ".join(f"{name!r} {n}" for name, n in rows.items())
        raise BadRequest(f"the inputs have different numbers of rows: {counts}")
    first = meta.inputs[0]
    check_size(first, rows[first.name], sum(a.size for a in checked.values()), max_rows,
               max_elements)
    return checked


def check_tensor(array: Any, spec: TensorSpec) -> np.ndarray:
    """One input checked against ``spec``: rank, fixed dimensions, and values
    its dtype can hold (no silent wrap of an int64 into an int32, no NaN)."""
    if not isinstance(array, np.ndarray):
        raise BadRequest(f"expected a numpy array for {spec.name!r}, got {type(array).__name__}")
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
    if spec.dtype == STRING:
        return _strings(array, spec)
    expected = np.dtype(spec.dtype)
    if not _casts(array.dtype.kind, expected):
        raise BadRequest(
            f"input {spec.name!r} has dtype {array.dtype}, expected {spec.describe()}"
        )
    if expected.kind in "iu" and array.size and array.dtype != expected:
        info = np.iinfo(expected)
        if array.min() < info.min or array.max() > info.max:
            raise BadRequest(f"input {spec.name!r} has values out of range for "
                             f"{spec.describe()} ({info.min} to {info.max})")
    with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
        checked = np.asarray(array, dtype=expected)
    if expected.kind == "f" and not np.isfinite(checked).all():
        raise BadRequest(
            f"input {spec.name!r} holds NaN or infinite values (or numbers too large "
            f"for {expected})"
        )
    return checked


def _casts(kind: str, target: np.dtype) -> bool:
    return kind in _CASTABLE_KINDS.get(target.kind, target.kind)


def castable(source: str, target: str) -> bool:
    """Whether arrays of dtype ``source`` go into an input of dtype ``target``
    (as :func:`check_tensor` casts them; values are checked then)."""
    if STRING in (source, target):
        return source == target
    return _casts(np.dtype(source).kind, np.dtype(target))


def _strings(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Text or bytes as an object array of bytes (text as UTF-8)."""
    if array.dtype.kind == "S":
        return array.astype(object)
    if array.dtype.kind not in "OU":
        raise BadRequest(f"input {spec.name!r} has dtype {array.dtype}, expected "
                         f"{spec.describe()} (text or bytes)")
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, value in enumerate(array.reshape(-1)):
        if isinstance(value, str):
            try:
                value = value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest(f"input {spec.name!r} holds text that is not valid "
                                 "Unicode") from None
        elif not isinstance(value, bytes):
            raise BadRequest(f"input {spec.name!r} holds a {type(value).__name__}, "
                             "expected text or bytes")
        flat[i] = value
    return out


def check_size(spec: TensorSpec, rows: int, elements: int, max_rows: int | None,
               max_elements: int | None) -> None:
    """A 413 when a request carries more rows or numbers than allowed."""
    if max_rows is not None and rows > max_rows:
        raise PayloadTooLarge(f"input {spec.name!r} has {rows} rows, the limit is {max_rows}")
    if max_elements is not None and elements > max_elements:
        raise PayloadTooLarge(f"input {spec.name!r} has {elements} numbers, the limit is "
                              f"{max_elements}")
