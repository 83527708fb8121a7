"""Build the benchmark model: Keras MobileNetV2 (224x224x3, 1000 classes),
randomly initialised (``weights=None``: nothing is downloaded), exported as a
SavedModel with ``serving_default: image float32[N, 224, 224, 3] →
probabilities float32[N, 1000]``. Never committed; `make bench` builds it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.export import export_classifier

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "models" / "mobilenet_v2"
SIZE = 224


def build(out: Path) -> Path:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    net = tf.keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), weights=None)

    version_dir = out / "1"
    export_classifier(net, version_dir, "image", (SIZE, SIZE, 3))
    (out / "labels.txt").write_text("".join(f"class_{i}\n" for i in range(1000)))
    return version_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    print(f"wrote {build(parser.parse_args().out)}")


if __name__ == "__main__":
    main()
