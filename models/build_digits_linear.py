"""Build the second default model: softmax regression on the raw 8x8 digits.

A tensor model beside the image CNN, so one app shows both input kinds: its
``serving_default`` takes ``pixels: float32[N, 64]`` (scikit-learn's digits,
values 0..16, row-major) and returns ``probabilities: float32[N, 10]``.

Run ``python -m models.build_digits_linear`` (``make model`` does it when the
model is missing); it writes ``labels.txt`` and ``metrics.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from models.export import export_classifier

HERE = Path(__file__).resolve().parent
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "digits_linear")
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()

    import tensorflow as tf

    digits = load_digits()
    x = digits.data.astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.2, random_state=SEED, stratify=digits.target
    )
    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    net = tf.keras.Sequential([
        tf.keras.layers.Input((64,), name="pixels"),
        tf.keras.layers.Rescaling(1 / 16),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
    net.compile(optimizer=tf.keras.optimizers.Adam(1e-2),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    net.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=0)
    accuracy = float((net.predict(x_test, verbose=0).argmax(axis=1) == y_test).mean())
    print(f"held-out accuracy: {accuracy:.4f} on {len(y_test)} rows")
    if accuracy < 0.9:
        raise SystemExit(f"accuracy {accuracy:.4f} is below 0.9; not exporting")

    export_classifier(net, args.out / "1", "pixels", (64,))
    (args.out / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)))
    (args.out / "metrics.json").write_text(json.dumps(
        {"held_out_accuracy": round(accuracy, 4), "held_out_rows": len(y_test),
         "epochs": args.epochs, "seed": SEED}, indent=2) + "\n")
    print(f"wrote {args.out / '1'}")


if __name__ == "__main__":
    main()
