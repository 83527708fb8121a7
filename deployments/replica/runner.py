"""A loaded SavedModel signature, called with numpy and answering numpy.

Loading happens once per model replica. Each call converts its outputs to
numpy and drops every TensorFlow tensor before returning, so nothing grows
from one request to the next.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import config_pb2, saved_model_pb2

from deployments.config import ModelArgs
from deployments.errors import BadRequest, clip
from deployments.model_files import labels_file
from deployments.signature import (
    PREDICT,
    STRING,
    ModelMetadata,
    TensorSpec,
    default_scores,
    image_geometry,
)
from deployments.types import DEFAULT_SIGNATURE, Inputs, Outputs


class ModelLoadError(RuntimeError):
    """The SavedModel at a configured path cannot be served; says why."""


# The numpy dtype of each TensorFlow dtype a signature may declare (as
# ``tf.DType.as_numpy_dtype`` gives it); strings are STRING.
def _dtype_name(dtype: tf.DType) -> str:
    return STRING if dtype == tf.string else np.dtype(dtype.as_numpy_dtype).name


def _spec(name: str, tensor_spec: tf.TensorSpec) -> TensorSpec:
    if tensor_spec.shape.rank is None:
        return TensorSpec(name, _dtype_name(tensor_spec.dtype), (), unknown_rank=True)
    return TensorSpec(name, _dtype_name(tensor_spec.dtype), tuple(tensor_spec.shape.as_list()))


def _proto_spec(name: str, info: Any) -> TensorSpec:
    """A ``TensorInfo`` of a SignatureDef as a spec (a TF1 graph's tensors)."""
    dtype = _dtype_name(tf.dtypes.as_dtype(info.dtype))
    if info.tensor_shape.unknown_rank:
        return TensorSpec(name, dtype, (), unknown_rank=True)
    return TensorSpec(name, dtype, tuple(None if d.size < 0 else d.size
                                         for d in info.tensor_shape.dim))


def _image_input(model: ModelArgs, inputs: tuple[TensorSpec, ...]) -> str | None:
    """The input encoded images are decoded into: ``image_input`` from the
    config, else the one input shaped like images (``input: image`` models)."""
    if model.input != "image":
        return None
    candidates = [s for s in inputs if s.name == model.image_input] if model.image_input \
        else [s for s in inputs if _is_image(s)]
    if model.image_input and not candidates:
        raise ModelLoadError(f"model {model.name!r} has no input {model.image_input!r} (it "
                             f"has: {', '.join(s.name for s in inputs)})")
    if len(candidates) != 1:
        raise ModelLoadError(
            f"model {model.name!r} is configured with input: image, but "
            + ("no input is shaped like images ([N, height, width, 1 or 3] floats)"
               if not candidates else "several inputs could take the images: name one "
                                      "with image_input"))
    try:
        geometry = image_geometry(candidates[0])
    except ValueError as exc:
        raise ModelLoadError(f"model {model.name!r} is configured with input: image, "
                             f"but {exc}") from None
    try:
        model.preprocessing.check(geometry)
    except ValueError as exc:
        raise ModelLoadError(f"model {model.name!r}: {exc}") from None
    return candidates[0].name


def _is_image(spec: TensorSpec) -> bool:
    try:
        image_geometry(spec)
    except ValueError:
        return False
    return True


def read_labels(path: Path | None, classes: int | None) -> tuple[str, ...]:
    """Labels, one per line; class indices when no file is configured; none
    when the scores output is not ``[N, classes]`` (e.g. a regression)."""
    if path is None:
        return tuple(str(i) for i in range(classes or 0))
    try:
        labels = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    except OSError as exc:
        raise ModelLoadError(f"cannot read labels file {path}: {exc.strerror}") from exc
    if len(labels) != classes:
        raise ModelLoadError(
            f"labels file {path} has {len(labels)} labels but the model outputs "
            f"{'no [N, classes] scores' if classes is None else f'{classes} scores'}"
        )
    return labels


def _read_saved_model(path: Path) -> saved_model_pb2.SavedModel:
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    return proto


def _signature_defs_json(meta_graph: Any) -> dict[str, Any]:
    """Every ``SignatureDef`` of the served meta graph, as TF Serving prints
    them in its metadata (field names as in the proto, every field shown)."""
    return {name: json_format.MessageToDict(
        definition, preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True)
        for name, definition in meta_graph.signature_def.items()}


# The signature TF2 SavedModels carry for their initializers: listed in the
# metadata (as TF Serving lists it), never served.
INIT_OP_SIGNATURE = "__saved_model_init_op"


def _tf_reason(message: str) -> str:
    """What an op said, without the graph trace TF puts around it (the line
    before ``[[{{node ...}}]]``, else the last line, less ``[Op:...]``)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reason = next((lines[i - 1] for i in range(1, len(lines)) if lines[i].startswith("[[")),
                  lines[-1] if lines else "")
    return re.sub(r"\s*\[Op:[^\]]*\]$", "", reason)


class _FunctionEngine:
    """A TF2 SavedModel: each signature a ``tf.function`` over the loaded
    concrete function, inputs checked by TensorFlow against its signature."""

    def __init__(self, path: Path, device: str, jit_compile: bool) -> None:
        with tf.device(device):
            self._model = tf.saved_model.load(str(path))
        self._device = device
        self._jit_compile = jit_compile
        self.specs = {}
        for name, fn in self._model.signatures.items():
            _, input_specs = fn.structured_input_signature
            self.specs[name] = (tuple(_spec(k, v) for k, v in sorted(input_specs.items())),
                                tuple(_spec(k, v) for k, v in
                                      sorted(fn.structured_outputs.items())))
        self._calls = {name: self._compile(name) for name in self.specs}

    def _compile(self, signature: str) -> tf.types.experimental.PolymorphicFunction:
        """Wrap the signature in one ``tf.function`` whose traces we can count.

        Without XLA the batch dimension stays unknown: one trace serves every
        batch size. XLA compiles per static shape, so then each shape traces
        once and callers must pad batches to a few bucket sizes
        (``static_shapes``) to keep the number of compilations bounded.
        """
        inputs, _ = self.specs[signature]
        names = [spec.name for spec in inputs]
        signature_fn = self._model.signatures[signature]

        def call(*tensors: tf.Tensor) -> dict[str, tf.Tensor]:
            return signature_fn(**dict(zip(names, tensors, strict=True)))

        input_signature = None if self._jit_compile else [
            tf.TensorSpec(None if s.unknown_rank else s.shape,
                          tf.string if s.dtype == STRING else s.dtype) for s in inputs]
        return tf.function(call, input_signature=input_signature,
                           jit_compile=self._jit_compile)

    @property
    def traces(self) -> int:
        return sum(c.experimental_get_tracing_count() for c in self._calls.values())

    def run(self, signature: str, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        with tf.device(self._device):
            result = self._calls[signature](*arrays)
        return {name: np.asarray(tensor.numpy()) for name, tensor in result.items()}


class _SessionEngine:
    """A TF1 SavedModel, run as TF Serving runs every SavedModel: its meta
    graph loaded into a session (initializers, assets and tables included),
    each signature fed and fetched by tensor name, shapes left to the graph.

    The session takes this process's TensorFlow configuration (thread pools,
    visible GPUs and their memory policy: ``deployments.replica.device``) and places
    ops itself, on the GPU when one is visible.
    """

    def __init__(self, path: Path, meta_graph: Any) -> None:
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        with self._graph.as_default():
            tf.compat.v1.saved_model.loader.load(
                self._session, list(meta_graph.meta_info_def.tags), str(path))
        self.specs = {}
        # Per signature: its output names, and the callable fed its inputs
        # in the specs' (sorted) order.
        self._feeds: dict[str, tuple[list[str], Any]] = {}
        for name, definition in meta_graph.signature_def.items():
            if not definition.inputs or not definition.outputs or name == INIT_OP_SIGNATURE:
                continue
            inputs = sorted(definition.inputs.items())
            outputs = sorted(definition.outputs.items())
            self.specs[name] = (tuple(_proto_spec(k, v) for k, v in inputs),
                                tuple(_proto_spec(k, v) for k, v in outputs))
            # The C++ session's callable: feeds are not checked against the
            # placeholders' shapes (Python's Session.run would refuse them).
            options = config_pb2.CallableOptions(feed=[v.name for _, v in inputs],
                                                 fetch=[v.name for _, v in outputs])
            self._feeds[name] = ([k for k, _ in outputs],
                                 self._session._make_callable_from_options(options))

    traces = 0  # the session runs the graph as it is

    def run(self, signature: str, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        outputs, call = self._feeds[signature]
        return dict(zip(outputs, call(*arrays), strict=True))


class SavedModelRunner:
    """One version of a model, loaded from ``path`` onto ``device``: every
    signature of its ``serve`` meta graph, the configured one the default."""

    def __init__(self, model: ModelArgs, version: int, path: Path, device: str) -> None:
        name, signature_name = model.name, model.signature_name
        if not (path / "saved_model.pb").is_file():
            reason = "no such directory" if not path.exists() else "no saved_model.pb in it"
            raise ModelLoadError(f"cannot load model {name!r} from {path}: {reason}")
        self.device = device
        self.path = path
        try:
            proto = _read_saved_model(path)
            meta_graph = next((g for g in proto.meta_graphs
                               if "serve" in g.meta_info_def.tags), proto.meta_graphs[0])
            tf2 = bool(meta_graph.object_graph_def.nodes)
            if not tf2 and model.jit_compile:
                raise ModelLoadError(
                    f"model {name!r} at {path} is a TF1 SavedModel, run in a session as TF "
                    "Serving runs it: jit_compile applies to TF2 SavedModels only")
            self._engine: _FunctionEngine | _SessionEngine = (
                _FunctionEngine(path, device, model.jit_compile) if tf2
                else _SessionEngine(path, meta_graph))
        except ModelLoadError:
            raise
        except Exception as exc:  # TF raises many types for a corrupt model
            raise ModelLoadError(
                f"cannot load model {name!r} from {path}: {type(exc).__name__}: {exc}"
            ) from exc
        specs = self._engine.specs
        # TF Serving serves a SavedModel without serving_default to requests
        # that name a signature: the first one stands in where we need one.
        unnamed_refused = signature_name not in specs
        if unnamed_refused:
            if signature_name != DEFAULT_SIGNATURE or not specs:
                raise ModelLoadError(
                    f"model {name!r} at {path} has no signature {signature_name!r} "
                    f"(it has: {', '.join(sorted(specs)) or 'none'})"
                )
            signature_name = min(specs)
        defs = _signature_defs_json(meta_graph)
        default = self._describe(model, version, signature_name, defs, strict=tf2)
        others = {sig: self._describe(model, version, sig, defs, strict=tf2, default=False)
                  for sig in sorted(specs) if sig != signature_name}
        self.metadata = replace(default, others=others, unnamed_refused=unnamed_refused)
        if model.jit_compile and (variable := [s.name for s in default.inputs if s.variable]):
            raise ModelLoadError(
                f"model {name!r} has inputs of variable inner size ({', '.join(variable)}): "
                "XLA would compile one program per size; serve it without jit_compile")
        self.static_shapes = model.jit_compile

    def _describe(self, model: ModelArgs, version: int, signature: str,
                  defs: dict[str, Any], strict: bool, default: bool = True) -> ModelMetadata:
        """One signature's metadata; only the default one takes images and
        reads the labels file (other signatures' classes are numbered)."""
        name = model.name
        inputs, outputs = self._engine.specs[signature]
        output_names = [o.name for o in outputs]
        scores = (model.scores_output if default else None) or default_scores(outputs)
        if scores not in output_names:
            raise ModelLoadError(
                f"model {name!r} has no output {scores!r} (it has: {', '.join(output_names)})"
            )
        shape = next(o for o in outputs if o.name == scores).shape
        classes = shape[1] if len(shape) == 2 else None
        return ModelMetadata(
            name=name, version=version, signature_name=signature, inputs=inputs,
            outputs=outputs, scores_output=scores,
            labels=read_labels(labels_file(model) if default else None, classes),
            image_input=_image_input(model, inputs) if default else None,
            method_name=defs[signature].get("method_name") or PREDICT,
            signature_defs=defs,
            preprocessing=model.preprocessing,
            strict_shapes=strict,
            other_signature=not default,
        )

    @property
    def traces(self) -> int:
        """How many times TensorFlow traced the model calls so far."""
        return self._engine.traces

    def run(self, inputs: Inputs, signature: str | None = None) -> Outputs:
        """One call of ``signature`` (default: the configured one) on the
        inputs exactly as received.

        We never copy the array, but TensorFlow does once: converting numpy
        to a tensor copies into TF's own buffer (measured: ~6 ms for a 19 MB
        batch of 32 images at 224x224x3, ~2% of MobileNetV2's time on it).
        DLPack would share the buffer, but numpy refuses to export the
        object store's read-only views through it.
        """
        # (None: the default, a SavedModel's stand-in too, which warm-up and
        # batch sizing run; requests reach here with the name they gave.)
        meta = self.metadata if signature is None else self.metadata.signature(signature)
        try:
            return self._engine.run(meta.signature_name,
                                    [inputs[spec.name] for spec in meta.inputs])
        except tf.errors.InvalidArgumentError as exc:
            # Shapes and dtypes were checked (or are the graph's to judge):
            # what the graph refuses is the request's to fix, as TF Serving
            # reports it.
            raise BadRequest(f"model {self.metadata.name!r} refused the input: "
                             f"{clip(_tf_reason(exc.message), 300)}") from None
