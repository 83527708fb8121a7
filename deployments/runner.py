"""A loaded SavedModel signature, called with numpy and answering numpy.

Loading happens once per model replica. Each call converts its outputs to
numpy and drops every TensorFlow tensor before returning, so nothing grows
from one request to the next.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

from deployments.batching import Outputs
from deployments.codecs.errors import BadRequest, clip
from deployments.config import ModelArgs
from deployments.signature import (
    PREDICT,
    STRING,
    Inputs,
    ModelMetadata,
    TensorSpec,
    image_geometry,
)


class ModelLoadError(RuntimeError):
    """The SavedModel at a configured path cannot be served; says why."""


def _spec(name: str, tensor_spec: tf.TensorSpec) -> TensorSpec:
    shape = tuple(tensor_spec.shape.as_list()) if tensor_spec.shape.rank is not None else ()
    dtype = STRING if tensor_spec.dtype == tf.string else np.dtype(
        tensor_spec.dtype.as_numpy_dtype).name
    return TensorSpec(name, dtype, shape)


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


def _signature_defs(path: Path, signature_name: str) -> dict[str, Any]:
    """The served ``SignatureDef`` from saved_model.pb, as JSON."""
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    defs = proto.meta_graphs[0].signature_def
    return {signature_name: json_format.MessageToDict(
        defs[signature_name], preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True)}  # as TF Serving prints it


def _tf_reason(message: str) -> str:
    """What an op said, without the graph trace TF puts around it (the line
    before ``[[{{node ...}}]]``, else the last line, less ``[Op:...]``)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reason = next((lines[i - 1] for i in range(1, len(lines)) if lines[i].startswith("[[")),
                  lines[-1] if lines else "")
    return re.sub(r"\s*\[Op:[^\]]*\]$", "", reason)


class SavedModelRunner:
    """One version of a model, loaded from ``path`` onto ``device``."""

    def __init__(self, model: ModelArgs, version: int, path: Path, device: str) -> None:
        name, signature_name = model.name, model.signature_name
        if not (path / "saved_model.pb").is_file():
            reason = "no such directory" if not path.exists() else "no saved_model.pb in it"
            raise ModelLoadError(f"cannot load model {name!r} from {path}: {reason}")
        self.device = device
        self.path = path
        try:
            with tf.device(device):
                self._model = tf.saved_model.load(str(path))
        except Exception as exc:  # TF raises many types for a corrupt model
            raise ModelLoadError(
                f"cannot load model {name!r} from {path}: {type(exc).__name__}: {exc}"
            ) from exc
        signatures = self._model.signatures
        if signature_name not in signatures:
            raise ModelLoadError(
                f"model {name!r} at {path} has no signature {signature_name!r} "
                f"(it has: {', '.join(sorted(signatures)) or 'none'})"
            )
        self._fn = signatures[signature_name]
        _, input_specs = self._fn.structured_input_signature
        inputs = tuple(_spec(k, v) for k, v in sorted(input_specs.items()))
        variable = [s.name for s in inputs if s.variable]
        if model.jit_compile and variable:
            raise ModelLoadError(
                f"model {name!r} has inputs of variable inner size ({', '.join(variable)}): "
                "XLA would compile one program per size; serve it without jit_compile")
        outputs = tuple(_spec(k, v) for k, v in sorted(self._fn.structured_outputs.items()))
        output_names = [o.name for o in outputs]
        floats = [o.name for o in outputs if o.dtype != STRING and np.dtype(o.dtype).kind == "f"]
        scores = model.scores_output or (floats or output_names)[0]
        if scores not in output_names:
            raise ModelLoadError(
                f"model {name!r} has no output {scores!r} (it has: {', '.join(output_names)})"
            )
        shape = next(o for o in outputs if o.name == scores).shape
        classes = shape[1] if len(shape) == 2 else None
        defs = _signature_defs(path, signature_name)
        self.metadata = ModelMetadata(
            name=name, version=version, signature_name=signature_name, inputs=inputs,
            outputs=outputs, scores_output=scores,
            labels=read_labels(model.labels_file(), classes),
            image_input=_image_input(model, inputs),
            method_name=defs[signature_name].get("method_name") or PREDICT,
            signature_defs=defs,
            preprocessing=model.preprocessing,
        )
        self.static_shapes = model.jit_compile
        self._call = self._compile(model.jit_compile)

    def _compile(self, jit_compile: bool) -> tf.types.experimental.PolymorphicFunction:
        """Wrap the signature in one ``tf.function`` whose traces we can count.

        Without XLA the batch dimension stays unknown: one trace serves every
        batch size. XLA compiles per static shape, so then each shape traces
        once and callers must pad batches to a few bucket sizes
        (``static_shapes``) to keep the number of compilations bounded.
        """
        names = [spec.name for spec in self.metadata.inputs]
        signature_fn = self._fn

        def call(*tensors: tf.Tensor) -> dict[str, tf.Tensor]:
            return signature_fn(**dict(zip(names, tensors, strict=True)))

        input_signature = None if jit_compile else [
            tf.TensorSpec(s.shape, tf.string if s.dtype == STRING else s.dtype)
            for s in self.metadata.inputs]
        return tf.function(call, input_signature=input_signature, jit_compile=jit_compile)

    @property
    def traces(self) -> int:
        """How many times TensorFlow traced the model call so far."""
        return self._call.experimental_get_tracing_count()

    def run(self, inputs: Inputs) -> Outputs:
        """One signature call on the inputs exactly as received.

        We never copy the array, but TensorFlow does once: converting numpy
        to a tensor copies into TF's own buffer (measured: ~6 ms for a 19 MB
        batch of 32 images at 224x224x3, ~2% of MobileNetV2's time on it).
        DLPack would share the buffer, but numpy refuses to export the
        object store's read-only views through it.
        """
        try:
            with tf.device(self.device):
                result = self._call(*[inputs[spec.name] for spec in self.metadata.inputs])
        except tf.errors.InvalidArgumentError as exc:
            # Shapes and dtypes were checked: what the graph refuses is in the
            # values (a token id past the vocabulary, an Example it cannot
            # parse), so the request's to fix, as TF Serving reports it.
            raise BadRequest(f"model {self.metadata.name!r} refused the input: "
                             f"{clip(_tf_reason(exc.message), 300)}") from None
        return {name: tensor.numpy() for name, tensor in result.items()}
