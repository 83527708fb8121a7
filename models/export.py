"""Export a Keras image classifier as the SavedModel layout the server reads:
``serving_default: image float32[N, H, W, C] → probabilities float32[N, classes]``."""

from __future__ import annotations

from pathlib import Path


def export_classifier(net, path: Path, height: int, width: int, channels: int) -> None:
    import tensorflow as tf

    spec = tf.TensorSpec([None, height, width, channels], tf.float32, name="image")

    @tf.function(input_signature=[spec])
    def serve(image):
        return {"probabilities": net(image, training=False)}

    module = tf.Module()
    module.net = net  # tracked, so its variables are saved
    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})
