"""Build the benchmark models: Keras MobileNetV2 (224x224x3, 1000 classes),
randomly initialised (``weights=None``: nothing is downloaded), and a GPU
stand-in of the same signature that costs almost nothing (mean pool → dense:
microseconds per image), so that serving is the only cost measured. Both are
SavedModels with ``serving_default: image float32[N, 224, 224, 3] →
probabilities float32[N, 1000]``. Never committed; `make bench` builds them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.export import export_classifier

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "benchmarks" / "models"
DEFAULT_OUT = MODELS / "mobilenet_v2"
STANDIN_OUT = MODELS / "standin"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--standin", action="store_true", help="build the GPU stand-in")
    args = parser.parse_args()
    builder = build_standin if args.standin else build
    out = STANDIN_OUT if args.standin and args.out == DEFAULT_OUT else args.out
    print(f"wrote {builder(out)}")


if __name__ == "__main__":
    main()
