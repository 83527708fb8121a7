"""Export a Keras model as the SavedModel layout the server reads:
``serving_default: <input> float32[N, ...] → <output> float32[N, ...]``
(``probabilities`` for a classifier)."""

from __future__ import annotations

from pathlib import Path


def export_classifier(net, path: Path, input_name: str, input_shape: tuple[int, ...],
                      output_name: str = "probabilities") -> None:
    import tensorflow as tf

    spec = tf.TensorSpec([None, *input_shape], tf.float32, name=input_name)

    @tf.function(input_signature=[spec])
    def serve(batch):
        return {output_name: net(batch, training=False)}

    module = tf.Module()
    module.net = net  # tracked, so its variables are saved
    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})
