"""Build the default model: a small CNN on scikit-learn's bundled digits data.

The 8x8 digits are upscaled to MNIST's 28x28x1 (white ink on black, values in
[0, 1]) and the trained network is exported as a SavedModel whose
``serving_default`` signature takes ``image: float32[N, 28, 28, 1]`` and returns
``probabilities: float32[N, 10]``. Training is seeded and op-deterministic, so
the same TensorFlow build gives the same weights.

Run ``python -m models.build_digits`` (``make model`` does it when the model is
missing). It also writes ``labels.txt``, ``metrics.json`` (held-out accuracy)
and sample images under ``models/samples/``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from models.export import export_classifier

HERE = Path(__file__).resolve().parent
SIZE = 28
SEED = 0


def upscale(digits: np.ndarray, size: int = SIZE) -> np.ndarray:
    """8x8 images with values 0..16 → ``[N, size, size]`` floats in [0, 1].

    Uses Pillow's bilinear resize, the same filter the server's image codec
    uses, so training and serving see the same kind of pixels.
    """
    out = np.empty((len(digits), size, size), dtype=np.float32)
    for i, d in enumerate(digits):
        im = Image.fromarray((d * (255.0 / 16.0)).astype(np.uint8), mode="L")
        out[i] = np.asarray(im.resize((size, size), Image.BILINEAR), np.float32) / 255.0
    return out


def train(x_train: np.ndarray, y_train: np.ndarray, epochs: int):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    layers = tf.keras.layers
    model = tf.keras.Sequential(
        [
            layers.Input((SIZE, SIZE, 1), name="image"),
            layers.Conv2D(16, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(0.25),
            layers.Dense(64, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_train[..., None], y_train, epochs=epochs, batch_size=32, verbose=2)
    return model


def write_samples(x: np.ndarray, y: np.ndarray, out: Path) -> None:
    """A few held-out digits as PNG/JPEG files, some RGB and larger than 28x28."""
    out.mkdir(parents=True, exist_ok=True)
    formats = [  # (size, mode, extension)
        (28, "L", "png"), (28, "L", "jpg"), (64, "RGB", "png"), (100, "RGB", "jpg"),
        (56, "L", "png"), (140, "RGB", "png"), (28, "RGB", "jpg"), (84, "L", "jpg"),
        (200, "RGB", "png"), (32, "L", "png"),
    ]
    seen: set[int] = set()
    picks = []
    for i, label in enumerate(y):  # one sample per class, in class order
        if int(label) not in seen:
            seen.add(int(label))
            picks.append(i)
    picks.sort(key=lambda i: int(y[i]))
    for (size, mode, ext), i in zip(formats, picks, strict=True):
        im = Image.fromarray((x[i] * 255).round().astype(np.uint8), mode="L")
        im = im.resize((size, size), Image.BILINEAR).convert(mode)
        im.save(out / f"digit_{int(y[i])}_{size}px_{mode.lower()}.{ext}", quality=95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "digits")
    parser.add_argument("--samples", type=Path, default=HERE / "samples")
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()

    digits = load_digits()
    x = upscale(digits.images)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.2, random_state=SEED, stratify=digits.target
    )
    model = train(x_train, y_train, args.epochs)
    probs = model.predict(x_test[..., None], verbose=0)
    accuracy = float((probs.argmax(axis=1) == y_test).mean())
    print(f"held-out accuracy: {accuracy:.4f} on {len(y_test)} images")
    if accuracy < 0.95:
        raise SystemExit(f"accuracy {accuracy:.4f} is below 0.95; not exporting")

    version_dir = args.out / "1"
    export_classifier(model, version_dir, "image", (SIZE, SIZE, 1))
    (args.out / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)))
    (args.out / "metrics.json").write_text(
        json.dumps(
            {"held_out_accuracy": round(accuracy, 4), "held_out_images": len(y_test),
             "train_images": len(y_train), "epochs": args.epochs, "seed": SEED},
            indent=2,
        )
        + "\n"
    )
    write_samples(x_test, y_test, args.samples)
    print(f"wrote {version_dir}, labels, metrics and samples in {args.samples}")


if __name__ == "__main__":
    main()
