"""Build the example pipeline's first model: a locator that finds the digit
on a larger canvas (``examples/digit_reader``).

Each training canvas is 40x40 (white ink on black, values in [0, 1]) with one
of scikit-learn's bundled 8x8 digits upscaled to 14-24 px at a random place,
plus a little noise. The CNN regresses the digit's box, ``[top, left, bottom,
right]`` as fractions of the canvas: ``serving_default`` takes ``image:
float32[N, 40, 40, 1]`` and returns ``box: float32[N, 4]``. The pipeline's
transform crops that box and resizes it to 28x28 for the digits classifier
(``models/build_digits.py``), which was trained on whole upscaled digits.

Run ``python -m models.build_locator`` (``make model`` does it when the model
is missing); it writes ``metrics.json`` (held-out box error in pixels) and a
few sample canvases as PNG under ``models/locator/samples``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from models.build_digits import upscale
from models.export import export_classifier

HERE = Path(__file__).resolve().parent
CANVAS = 40
SIZES = (14, 24)  # the digit's side in pixels, drawn at random in this range
SEED = 0


def canvases(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` canvases ``[N, 40, 40]``, their boxes ``[N, 4]`` (fractions)
    and digit labels, drawn from the bundled digits with ``seed``."""
    digits = load_digits()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(digits.images), count)
    images = np.zeros((count, CANVAS, CANVAS), np.float32)
    boxes = np.zeros((count, 4), np.float32)
    for i, pick in enumerate(picks):
        size = int(rng.integers(SIZES[0], SIZES[1] + 1))
        top, left = (int(v) for v in rng.integers(0, CANVAS - size + 1, 2))
        images[i, top:top + size, left:left + size] = upscale(digits.images[pick:pick + 1],
                                                              size)[0]
        boxes[i] = np.array([top, left, top + size, left + size]) / CANVAS
    noise = rng.normal(0.0, 0.03, images.shape).astype(np.float32)
    return np.clip(images + noise, 0.0, 1.0), boxes, digits.target[picks]


def train(images: np.ndarray, boxes: np.ndarray, epochs: int):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    layers = tf.keras.layers
    model = tf.keras.Sequential([
        layers.Input((CANVAS, CANVAS, 1), name="image"),
        layers.Conv2D(16, 3, activation="relu", padding="same"),
        layers.MaxPooling2D(),
        layers.Conv2D(32, 3, activation="relu", padding="same"),
        layers.MaxPooling2D(),
        layers.Conv2D(32, 3, activation="relu", padding="same"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(4, activation="sigmoid"),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(2e-3), loss="mse")
    model.fit(images[..., None], boxes, epochs=epochs, batch_size=64, verbose=2)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "locator")
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()

    images, boxes, _ = canvases(6000, SEED)
    held_images, held_boxes, held_labels = canvases(500, SEED + 1)
    net = train(images, boxes, args.epochs)
    error = np.abs(net.predict(held_images[..., None], verbose=0) - held_boxes) * CANVAS
    export_classifier(net, args.out / "1", "image", (CANVAS, CANVAS, 1), output_name="box")
    metrics = {"held_out_canvases": len(held_boxes),
               "box_mean_abs_error_px": round(float(error.mean()), 3),
               "box_max_abs_error_px": round(float(error.max()), 3)}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    samples = args.out / "samples"
    samples.mkdir(exist_ok=True)
    for i in range(10):
        pixels = (held_images[i] * 255).round().astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(samples / f"canvas_{i}_digit_{held_labels[i]}.png")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
