"""Export a Keras classifier as the SavedModel layout the server reads:
``serving_default: <input> float32[N, ...] → probabilities float32[N, classes]``."""

from __future__ import annotations

from pathlib import Path


def export_classifier(net, path: Path, input_name: str, input_shape: tuple[int, ...]) -> None:
    import tensorflow as tf

    spec = tf.TensorSpec([None, *input_shape], tf.float32, name=input_name)

    @tf.function(input_signature=[spec])
    def serve(batch):
        return {"probabilities": net(batch, training=False)}

    module = tf.Module()
    module.net = net  # tracked, so its variables are saved
    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})
