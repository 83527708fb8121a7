"""What a model takes and returns, as plain data (no TensorFlow).

The model replica reads these from the SavedModel's serving signature; the
preprocessor uses them to decode images to the right size and to check
tensors before anything is put in the object store.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import ml_dtypes
import numpy as np

from deployments.errors import BadRequest, PayloadTooLarge, clip
from deployments.preprocessing import DEFAULT, ImagePreprocessing
from deployments.types import DEFAULT_SIGNATURE, ImageGeometry, Inputs, Shape

# Which numpy kinds may be cast to which target kinds without surprises:
# bool/int data into a float model is fine, floats into an int model are
# not; ints go into unsigned inputs when their values fit (checked).
_CASTABLE_KINDS = {"f": "biuf", "i": "iu", "u": "iu", "b": "b"}

# The dtype name of string tensors (``tf.string``): numpy object arrays of bytes.
STRING = "string"

# TensorFlow's bfloat16, a float to numpy only through ml_dtypes (its kind is "V").
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def _kind(dtype: np.dtype) -> str:
    """A dtype's numpy kind, bfloat16 counted as the float it is."""
    return "f" if dtype == BFLOAT16 else dtype.kind


def is_float(dtype: np.dtype | str) -> bool:
    """Whether a tensor of ``dtype`` (a numpy dtype or its name, or STRING) holds floats."""
    return dtype != STRING and _kind(np.dtype(dtype)) == "f"


def default_scores(outputs: Sequence[TensorSpec]) -> str:
    """The output taken for class scores where none is named: the first of
    floats, else the first output (a model's, or a pipeline's)."""
    return next((o.name for o in outputs if is_float(o.dtype)), outputs[0].name)


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a signature; ``shape[0]`` is the batch dimension
    when it is left open (``None``). A SignatureDef may also declare a tensor
    of unknown rank (``unknown_rank``: any shape; ``shape`` is then empty)."""

    name: str
    dtype: str  # a numpy dtype name, or STRING
    shape: Shape
    unknown_rank: bool = False

    def describe(self) -> str:
        if self.unknown_rank:
            return f"{self.dtype}[any shape]"
        dims = ", ".join("N" if i == 0 and d is None else ("?" if d is None else str(d))
                         for i, d in enumerate(self.shape))
        return f"{self.dtype}[{dims}]"

    @property
    def variable(self) -> bool:
        """Whether a dimension after the batch is left open (a sequence length, say)."""
        return None in self.shape[1:]

    @property
    def batched(self) -> bool:
        """Whether the first dimension is an open batch dimension."""
        return not self.unknown_rank and len(self.shape) > 0 and self.shape[0] is None

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether an array of ``shape`` has this spec's rank and fixed sizes."""
        if self.unknown_rank:
            return True
        return len(shape) == len(self.shape) and all(
            d is None or d == a for d, a in zip(self.shape, shape, strict=True))


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
    # False where the graph decides which shapes it takes (a TF1 SavedModel,
    # run in a session as TF Serving runs it): tensors of other shapes than
    # the SignatureDef's are fed as they are, outside cross-request batches.
    strict_shapes: bool = True
    # The version's other signatures by name, on the default signature's
    # metadata (the config's ``signature_name``); each is a view like this one.
    others: Mapping[str, ModelMetadata] = field(default_factory=dict, compare=False)
    # Whether this is one of ``others`` (requests name it; the default is not named).
    other_signature: bool = False
    # Whether this is a SavedModel without ``serving_default``: the default is a
    # stand-in (its first signature) for what needs one (warm-up, batch
    # sizing); a request naming no signature is refused, as TF Serving refuses
    # it (``signature``), one naming the stand-in gets it.
    unnamed_refused: bool = False

    @property
    def takes_images(self) -> bool:
        return self.image_input is not None

    @property
    def batchable(self) -> bool:
        """Whether requests' rows may be merged into one call: every input
        and output has an open batch dimension (else each request runs alone)."""
        return all(s.batched for s in (*self.inputs, *self.outputs))

    @property
    def signature_names(self) -> list[str]:
        """Every signature this version serves, the default first."""
        return [self.signature_name, *self.others]

    @property
    def named_signature(self) -> str | None:
        """The signature a call names to the model replica (none: the default)."""
        return self.signature_name if self.other_signature else None

    def signature(self, name: str | None) -> ModelMetadata:
        """The metadata of signature ``name`` (none or empty: the default), or
        TF Serving's 400 for one the SavedModel lacks (the default too, where
        it lacks ``serving_default``)."""
        if name in (None, ""):
            if self.unnamed_refused:
                raise self.missing(DEFAULT_SIGNATURE)
            return self
        if name == self.signature_name:  # the stand-in named: calls name it too
            return (replace(self, unnamed_refused=False, other_signature=True)
                    if self.unnamed_refused else self)
        view = self.others.get(name)
        if view is None:
            raise self.missing(name)
        return view

    def missing(self, name: str) -> BadRequest:
        """TF Serving's 400 for a signature the SavedModel lacks."""
        return BadRequest(f"Serving signature name: \"{clip(name)}\" not found in signature "
                          f"def (model {self.name!r} version {self.version} has: "
                          f"{', '.join(map(repr, self.signature_names))})")

    def check_input_count(self, count: int) -> None:
        """A 400 for a request of more tensors than any signature of this
        version takes, before any is read (each costs parsing work)."""
        most = max(len(view.inputs) for view in (self, *self.others.values()))
        if count > most:
            raise BadRequest(f"input size does not match signature: the request has {count} "
                             f"input tensors, model {self.name!r} takes at most {most} "
                             f"({self.describe_inputs()})")

    def with_batch_size(self, rows: int) -> ModelMetadata:
        """These metadata (and every other signature's) with ``max_batch_size`` set."""
        return replace(self, max_batch_size=rows, others={
            name: replace(view, max_batch_size=rows) for name, view in self.others.items()})

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
    if not is_float(spec.dtype):
        raise ValueError(f"input {spec.name!r} is {spec.describe()}: images are decoded to "
                         "floats, so an image input must be a float type")
    _, height, width, channels = cast(tuple[int, ...], spec.shape)  # (no None: checked above)
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
        said = "; ".join(cast(Iterable[str], filter(None, [  # (the empty lists dropped)
            missing and f"missing {', '.join(map(repr, missing))}",
            unknown and f"unknown {', '.join(map(repr, unknown))}"])))
        raise BadRequest(f"{where} names inputs the model does not take ({said}); model "
                         f"{meta.name!r} takes {meta.describe_inputs()}")


def check_inputs(inputs: dict[str, Any], meta: ModelMetadata, max_rows: int | None = None,
                 max_elements: int | None = None, finite: Collection[str] = ()) -> Inputs:
    """Every input of ``meta``'s signature, each checked against its spec and
    cast to its dtype if needed (else not copied); all with the same rows.
    ``finite``: inputs whose values are known finite (decoded images, or
    arrays a data plane checked before it sent them): not scanned again
    unless a cast narrows them."""
    check_input_names(inputs, meta, "the request")
    checked = {spec.name: check_tensor(inputs[spec.name], spec, meta.strict_shapes,
                                       spec.name in finite)
               for spec in meta.inputs}
    rows = {name: len(array) if array.ndim else 1 for name, array in checked.items()}
    if len(set(rows.values())) > 1 and fits_batch(checked, meta):
        counts = ", ".join(f"{name!r} {n}" for name, n in rows.items())
        raise BadRequest(f"the inputs have different numbers of rows: {counts}")
    if meta.inputs:
        first = meta.inputs[0]
        check_size(first, max(rows.values()), sum(a.size for a in checked.values()),
                   max_rows, max_elements)
    return checked


def fits_batch(inputs: Inputs, meta: ModelMetadata) -> bool:
    """Whether checked ``inputs`` may share a call with other requests' rows:
    the signature batches, and each array has its input's declared shape."""
    return meta.batchable and all(spec.fits(inputs[spec.name].shape) for spec in meta.inputs)


def check_tensor(array: Any, spec: TensorSpec, strict_shapes: bool = True,
                 finite: bool = False) -> np.ndarray:
    """One input checked against ``spec``: rank, fixed dimensions (unless the
    graph decides: ``strict_shapes`` false), and values its dtype can hold
    (no silent wrap of an int64 into an int32, no NaN). ``finite``: the
    values are known finite in their own dtype, so unless a cast narrows
    them they are not scanned again."""
    if not isinstance(array, np.ndarray):
        raise BadRequest(f"expected a numpy array for {spec.name!r}, got {type(array).__name__}")
    if strict_shapes and not spec.fits(array.shape):
        raise BadRequest(
            f"input {spec.name!r} has shape {list(array.shape)}, expected {spec.describe()}"
        )
    if spec.batched and spec.fits(array.shape) and array.shape[0] == 0:
        raise BadRequest(f"input {spec.name!r} is an empty batch")
    if spec.dtype == STRING:
        return _strings(array, spec)
    expected = np.dtype(spec.dtype)
    if not _casts(_kind(array.dtype), expected):
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
    if _kind(expected) == "f" and not (finite and checked is array) \
            and not np.isfinite(checked).all():
        raise BadRequest(
            f"input {spec.name!r} holds NaN or infinite values (or numbers too large "
            f"for {expected})"
        )
    return checked


def _casts(kind: str, target: np.dtype) -> bool:
    return kind in _CASTABLE_KINDS.get(_kind(target), target.kind)


def castable(source: str, target: str) -> bool:
    """Whether arrays of dtype ``source`` go into an input of dtype ``target``
    (as :func:`check_tensor` casts them; values are checked then)."""
    if STRING in (source, target):
        return source == target
    return _casts(_kind(np.dtype(source)), np.dtype(target))


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
