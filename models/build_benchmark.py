"""Build the benchmark models: Keras MobileNetV2 (224x224x3, 1000 classes),
randomly initialised (``weights=None``: nothing is downloaded), and a GPU
stand-in of the same signature that costs almost nothing (mean pool → dense:
microseconds per image), so that serving is the only cost measured. Both are
SavedModels with ``serving_default: image float32[N, 224, 224, 3] →
probabilities float32[N, 1000]``. Beside them, a small text encoder over
token ids of any length (``input_ids`` and ``attention_mask``, ``int32[N, ?]``
→ ``logits float32[N, 4]``; four self-attention blocks, random weights), for
batching sequences of mixed lengths. Never committed; `make bench` builds them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.export import export_classifier

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "benchmarks" / "models"
DEFAULT_OUT = MODELS / "mobilenet_v2"
STANDIN_OUT = MODELS / "standin"
SEQUENCE_OUT = MODELS / "sequence"
VOCABULARY = 8000
SIZE = 224
CLASSES = 1000


def _export(net, out: Path) -> Path:
    version_dir = out / "1"
    export_classifier(net, version_dir, "image", (SIZE, SIZE, 3))
    (out / "labels.txt").write_text("".join(f"class_{i}\n" for i in range(CLASSES)))
    return version_dir


def build(out: Path) -> Path:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    return _export(tf.keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3),
                                                     weights=None), out)


def build_standin(out: Path) -> Path:
    """What a GPU replica looks like from the serving path: next to free."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    net = tf.keras.Sequential([
        tf.keras.Input((SIZE, SIZE, 3)),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(CLASSES, activation="softmax"),
    ])
    return _export(net, out)


def build_sequence(out: Path) -> Path:
    """Embeddings, four self-attention blocks, masked mean pooling, 4 logits."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    width = 256
    embed = tf.keras.layers.Embedding(VOCABULARY, width)
    blocks = [(tf.keras.layers.MultiHeadAttention(4, width // 4),
               tf.keras.layers.Dense(2 * width, activation="gelu"),
               tf.keras.layers.Dense(width), tf.keras.layers.LayerNormalization(),
               tf.keras.layers.LayerNormalization()) for _ in range(4)]
    head = tf.keras.layers.Dense(4)

    class Encoder(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = [embed, head, *[layer for block in blocks for layer in block]]

        @tf.function(input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="input_ids"),
            tf.TensorSpec([None, None], tf.int32, name="attention_mask")])
        def serve(self, input_ids: tf.Tensor, attention_mask: tf.Tensor
                  ) -> dict[str, tf.Tensor]:
            mask = tf.cast(attention_mask, tf.float32)
            x = embed(input_ids)
            for attend, up, down, norm1, norm2 in blocks:
                x = norm1(x + attend(x, x, attention_mask=mask[:, None, :] > 0))
                x = norm2(x + down(up(x)))
            pooled = tf.reduce_sum(x * mask[:, :, None], axis=1) / tf.maximum(
                tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)
            return {"logits": head(pooled)}

    module = Encoder()
    version_dir = out / "1"
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve})
    return version_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--standin", action="store_true", help="build the GPU stand-in")
    which.add_argument("--sequence", action="store_true", help="build the text encoder")
    args = parser.parse_args()
    builder, default = ((build_standin, STANDIN_OUT) if args.standin else
                        (build_sequence, SEQUENCE_OUT) if args.sequence else
                        (build, DEFAULT_OUT))
    print(f"wrote {builder(default if args.out == DEFAULT_OUT else args.out)}")


if __name__ == "__main__":
    main()
