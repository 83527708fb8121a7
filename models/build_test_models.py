"""Build the small models the tests serve beside the default ones, each with a
signature of another shape than one float image (random or fixed weights, no
data, no downloads; a few seconds each). Written to ``models/test/`` (not
committed; ``make model`` runs this when they are missing):

- ``tabular``: ``age: float32[N, 1]`` and ``city: string[N, 1]`` (a
  vocabulary lookup inside the model) → ``approval: float32[N, 2]`` and
  ``amount: float32[N, 1]``.
- ``text``: ``text: string[N]``, vectorized inside the model → three classes.
- ``sequence``: ``input_ids`` and ``attention_mask``, ``int32[N, ?]`` (any
  length) → ``logits: float32[N, 4]``, masked mean pooling.
- ``photo_meta``: an image ``float32[N, 8, 8, 1]`` and ``extra: float32[N, 2]``.
- ``examples``: TF Serving's ``:classify`` and ``:regress`` signatures over
  serialized ``tf.Example`` protos (features ``x``: two floats, ``color``:
  one string).

Run ``python -m models.build_test_models [--out DIR]``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "test"
CITIES = ["lyon", "oslo", "lima"]
WORDS = ["good", "bad", "fine", "awful", "great", "meh"]
COLORS = ["red", "green", "blue"]


def build_tabular(out: Path) -> None:
    import tensorflow as tf

    lookup = tf.keras.layers.StringLookup(vocabulary=CITIES, output_mode="one_hot")
    score = tf.keras.layers.Dense(2, activation="softmax", name="approval")
    amount = tf.keras.layers.Dense(1, name="amount")

    class Tabular(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lookup, self.score, self.amount = lookup, score, amount

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="age"),
                                      tf.TensorSpec([None, 1], tf.string, name="city")])
        def serve(self, age: tf.Tensor, city: tf.Tensor) -> dict[str, tf.Tensor]:
            cities = tf.cast(self.lookup(tf.squeeze(city, 1)), tf.float32)
            features = tf.concat([age / 100.0, cities], axis=1)
            return {"approval": self.score(features), "amount": self.amount(features)}

    _save(Tabular(), out / "tabular", labels=["declined", "approved"])


def build_text(out: Path) -> None:
    import tensorflow as tf

    vectorize = tf.keras.layers.TextVectorization(max_tokens=20, output_sequence_length=6)
    vectorize.adapt(tf.constant([" ".join(WORDS)]))
    embed = tf.keras.layers.Embedding(20, 4)
    classify = tf.keras.layers.Dense(3, activation="softmax")

    class Text(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vectorize, self.embed, self.classify = vectorize, embed, classify

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
            tokens = self.embed(self.vectorize(text))
            return {"probabilities": self.classify(tf.reduce_mean(tokens, axis=1))}

    _save(Text(), out / "text", labels=["negative", "neutral", "positive"])


def build_sequence(out: Path) -> None:
    import tensorflow as tf

    embed = tf.keras.layers.Embedding(100, 8)
    head = tf.keras.layers.Dense(4)

    class Sequence(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = embed, head

        @tf.function(input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="input_ids"),
            tf.TensorSpec([None, None], tf.int32, name="attention_mask")])
        def serve(self, input_ids: tf.Tensor, attention_mask: tf.Tensor
                  ) -> dict[str, tf.Tensor]:
            mask = tf.cast(attention_mask, tf.float32)[:, :, None]
            pooled = tf.reduce_sum(self.embed(input_ids) * mask, axis=1) / tf.maximum(
                tf.reduce_sum(mask, axis=1), 1.0)
            return {"logits": self.head(pooled)}

    _save(Sequence(), out / "sequence")


def build_photo_meta(out: Path) -> None:
    import tensorflow as tf

    conv = tf.keras.layers.Conv2D(2, 3, activation="relu")
    head = tf.keras.layers.Dense(3, activation="softmax")

    class PhotoMeta(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = conv, head

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32, name="photo"),
                                      tf.TensorSpec([None, 2], tf.float32, name="extra")])
        def serve(self, photo: tf.Tensor, extra: tf.Tensor) -> dict[str, tf.Tensor]:
            pooled = tf.reduce_mean(self.conv(photo), axis=[1, 2])
            return {"probabilities": self.head(tf.concat([pooled, extra], axis=1))}

    _save(PhotoMeta(), out / "photo_meta", labels=["cat", "dog", "owl"])


def build_examples(out: Path) -> None:
    """A TF1-style SavedModel with classify (the default) and regress signatures."""
    import tensorflow as tf

    v1 = tf.compat.v1
    path = out / "examples" / "1"
    with tf.Graph().as_default() as graph, v1.Session(graph=graph) as session:
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        features = v1.io.parse_example(serialized, {
            "x": v1.io.FixedLenFeature([2], tf.float32),
            "color": v1.io.FixedLenFeature([1], tf.string, default_value="red")})
        table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(COLORS), tf.constant([0.0, 1.0, 2.0])), -1.0)
        color = table.lookup(tf.squeeze(features["color"], 1))[:, None]
        logits = tf.concat([features["x"], color], axis=1) @ tf.constant(
            [[1.0, -1.0], [0.5, 0.5], [0.0, 1.0]])
        scores = tf.nn.softmax(logits)
        classes = tf.tile(tf.constant([["no", "yes"]]), [tf.shape(scores)[0], 1])
        value = tf.reduce_sum(features["x"], axis=1, keepdims=True) + color
        session.run(v1.tables_initializer())
        builder = v1.saved_model.Builder(str(path))
        builder.add_meta_graph_and_variables(
            session, [v1.saved_model.tag_constants.SERVING],
            signature_def_map={
                "serving_default": v1.saved_model.classification_signature_def(
                    serialized, classes, scores),
                "regress": v1.saved_model.regression_signature_def(serialized, value),
            },
            main_op=v1.tables_initializer())
        builder.save()


def _save(module: object, out: Path, labels: list[str] | None = None) -> None:
    import tensorflow as tf

    tf.saved_model.save(module, str(out / "1"), signatures={"serving_default": module.serve})
    if labels:
        (out / "labels.txt").write_text("".join(f"{label}\n" for label in labels))


BUILDERS = {"tabular": build_tabular, "text": build_text, "sequence": build_sequence,
            "photo_meta": build_photo_meta, "examples": build_examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    for name, build in BUILDERS.items():
        shutil.rmtree(args.out / name, ignore_errors=True)  # a rebuild starts clean
        build(args.out)
        print(f"wrote {args.out / name / '1'}")


if __name__ == "__main__":
    main()
