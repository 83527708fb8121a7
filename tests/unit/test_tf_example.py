"""The tf.Example encoder, checked against TensorFlow's own protos (parsed
back, and serialized by TF from the same features)."""

import base64
import time

import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from deployments.codecs.tf_example import encode_examples
from deployments.errors import BadRequest, PayloadTooLarge


def serialize_examples(examples: list, context: object = None) -> list[bytes]:
    """The examples joined with their context; what that allocated is what
    was counted for it."""
    encoded = encode_examples(examples, context, max_elements=2**26)
    joined = encoded.joined()
    assert encoded.nbytes == sum(map(len, joined))
    return joined


def tf_example(features: dict) -> tf.train.Example:
    """The Example TF Serving builds for ``features`` (lists of one kind)."""
    def feature(values: list) -> tf.train.Feature:
        if not values:
            return tf.train.Feature()
        if isinstance(values[0], bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        if isinstance(values[0], float):
            return tf.train.Feature(float_list=tf.train.FloatList(value=values))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    return tf.train.Example(features=tf.train.Features(
        feature={name: feature(values) for name, values in features.items()}))


@pytest.mark.parametrize(
    ("json_features", "expected"),
    [
        ({"x": [1.5, -2.25, 1e30]}, {"x": [1.5, -2.25, 1e30]}),
        ({"x": 0.1}, {"x": [0.1]}),
        ({"n": [0, 1, -1, 2**63 - 1, -(2**63), 300]},
         {"n": [0, 1, -1, 2**63 - 1, -(2**63), 300]}),
        ({"flag": [True, False]}, {"flag": [1, 0]}),
        ({"word": "héllo", "words": ["a", ""]}, {"word": ["héllo".encode()], "words": [b"a", b""]}),
        ({"raw": {"b64": base64.b64encode(b"\x00\xff").decode()}}, {"raw": [b"\x00\xff"]}),
        ({"empty": []}, {"empty": []}),
        ({}, {}),
    ],
)
def test_examples_are_the_protos_tensorflow_writes(json_features, expected):
    (serialized,) = serialize_examples([json_features])
    parsed = tf.train.Example.FromString(serialized)
    assert parsed == tf_example(expected)
    if len(expected) <= 1:  # (with several, map order may differ)
        assert serialized == tf_example(expected).SerializeToString()


def test_context_features_are_in_every_example():
    serialized = serialize_examples([{"x": [1.0]}, {"x": [2.0]}], context={"city": "lyon"})
    assert [tf.train.Example.FromString(s) for s in serialized] == [
        tf_example({"x": [1.0], "city": [b"lyon"]}), tf_example({"x": [2.0], "city": [b"lyon"]})]


def test_tensorflow_parses_them_as_a_model_would():
    serialized = serialize_examples([{"x": [1.0, 2.0], "id": 7, "tag": "a"}])
    parsed = tf.io.parse_example(serialized, {
        "x": tf.io.FixedLenFeature([2], tf.float32), "id": tf.io.FixedLenFeature([1], tf.int64),
        "tag": tf.io.FixedLenFeature([1], tf.string)})
    assert parsed["x"].numpy().tolist() == [[1.0, 2.0]]
    assert parsed["id"].numpy().tolist() == [[7]]
    assert parsed["tag"].numpy().tolist() == [[b"a"]]


@pytest.mark.parametrize(
    ("examples", "context", "message"),
    [
        ([{"x": [1, 2.5]}], None, "'x' mixes int64 and float"),
        ([{"x": None}], None, "unexpected JSON type"),
        ([{"x": [[1.0]]}], None, "unexpected JSON type"),
        ([{"x": {"a": 1}}], None, "unexpected JSON type"),
        ([{"x": 2**63}], None, "does not fit an int64"),
        ([{"x": 1e39}], None, "does not fit a float"),
        ([{"x": {"b64": "@@"}}], None, "not valid base64"),
        ([{"x": "\ud800"}], None, "not valid Unicode"),
        ([[1.0]], None, r'"examples"\[0\] must be a JSON object'),
        ([{"x": 1.0}], [1], '"context" must be a JSON object'),
        ([{"x": 1.0}], {"x": 2.0}, "repeats features of \"context\" \\('x'\\)"),
    ],
)
def test_what_cannot_be_an_example_is_a_400_naming_it(examples, context, message):
    with pytest.raises(BadRequest, match=message):
        serialize_examples(examples, context)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8)


@given(examples=st.lists(JSON, min_size=1, max_size=3), context=st.none() | JSON)
def test_any_json_is_an_example_or_a_400(examples, context):
    try:
        serialized = serialize_examples(examples, context)
    except BadRequest:
        return
    assert all(isinstance(tf.train.Example.FromString(s), tf.train.Example)
               for s in serialized)


def test_feature_values_are_counted_before_any_is_read():
    with pytest.raises(PayloadTooLarge, match=r"11 feature values .*, the limit is 10"):
        encode_examples([{"x": [None] * 10, "y": "not read"}], None, max_elements=10)
    # The context is counted in every example: each carries a copy.
    with pytest.raises(PayloadTooLarge, match="13 feature values"):
        encode_examples([{}, {}, {"y": 1.0}], {"x": [1, 2, 3], "z": "a"}, max_elements=11)
    assert len(encode_examples([{}, {"y": 1.0}], {"x": [1, 2]}, max_elements=5).own) == 2


def test_a_long_list_is_encoded_by_protobuf_not_value_by_value():
    values = list(range(-(10**6), 10**6))  # 2M int64s, ~8 MB of JSON
    start = time.process_time()
    (serialized,) = serialize_examples([{"n": values}])
    cpu = time.process_time() - start
    assert serialized == tf_example({"n": values}).SerializeToString()
    assert cpu < 1.0, f"{cpu:.2f} s of CPU for 2M int64 values"
