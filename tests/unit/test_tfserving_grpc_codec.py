"""TF Serving's gRPC messages ↔ numpy, with TensorFlow's own
``tf.make_tensor_proto`` / ``tf.make_ndarray`` as the reference: every dtype
the REST API takes, in ``tensor_content`` and in the typed fields (padded as
TF pads them), the limits before any value is read, and the other RPCs'
messages."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from functools import partial

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    predict_pb2,
)

from deployments.codecs.tfserving_grpc import (
    encode_classify_response,
    encode_predict_response,
    encode_regress_response,
    examples_bytes,
    model_metadata_response,
    model_status_response,
    parse_examples,
    parse_predict_request,
    tensor_input,
    tensor_proto,
)
from deployments.errors import BadRequest, ModelFailed, PayloadTooLarge
from deployments.signature import CLASSIFY, REGRESS, ModelMetadata, TensorSpec
from deployments.versions import VersionStatus
from tests.common import ROOT

# Limits far above what these tests send.
parse = partial(parse_predict_request, max_rows=256, max_elements=2**26)

NUMBERS = ["float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64",
           "uint8", "uint16", "uint32", "uint64", "bool"]


def decode(proto) -> np.ndarray:
    return tensor_input("x", proto).decode()


def typed(array: np.ndarray):
    """TF's proto of ``array`` with its values in the typed field: TF writes
    a single value there, so the values are merged one by one."""
    flat = array.reshape(-1)
    proto = tf.make_tensor_proto(flat[0], shape=array.shape)
    for value in flat[1:]:
        proto.MergeFrom(tf.make_tensor_proto(value))
    assert not proto.tensor_content
    return proto


def with_content(array: np.ndarray):
    """The same values as ``tensor_content`` (TF writes most dtypes so itself)."""
    proto = tf.make_tensor_proto(array)
    for field, _ in proto.ListFields():
        if field.name.endswith("_val"):
            proto.ClearField(field.name)
    proto.tensor_content = np.ascontiguousarray(array).tobytes()
    return proto


@pytest.mark.parametrize("dtype", NUMBERS)
def test_every_dtype_in_both_encodings_reads_as_tensorflow_does(dtype: str):
    values = np.array([[0, 1, 2], [3, 4, 5]]).astype(dtype)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        values = np.array([[info.min, info.max, 1], [0, 7, info.max - 1]], dtype)
    for proto in (typed(values), with_content(values)):
        got = decode(proto)
        assert got.dtype == np.dtype(dtype) and got.shape == (2, 3)
        np.testing.assert_array_equal(got, tf.make_ndarray(proto))


def test_strings_are_object_arrays_of_bytes():
    values = np.array([[b"a", b""], ["é".encode(), b"\x00\xff"]], dtype=object)
    got = decode(typed(values))
    assert got.dtype == object and got.tolist() == tf.make_ndarray(typed(values)).tolist()


@pytest.mark.parametrize("dtype", [*NUMBERS, "string"])
def test_fewer_values_repeat_the_last_one_as_tensorflow_pads(dtype: str):
    tf_dtype = tf.string if dtype == "string" else tf.as_dtype(dtype)
    one = [b"z"] if dtype == "string" else np.array([1]).astype(dtype)
    some = [b"a", b"b"] if dtype == "string" else np.array([1, 0]).astype(dtype)
    for given_values in (one, some):
        proto = tf.make_tensor_proto(given_values, dtype=tf_dtype, shape=[2, 3])
        assert not proto.tensor_content
        np.testing.assert_array_equal(decode(proto), tf.make_ndarray(proto))
    empty = tf.make_tensor_proto([], dtype=tf_dtype)
    empty.tensor_shape.CopyFrom(tf.TensorShape([2]).as_proto())
    zeros = np.full(2, b"", object) if dtype == "string" else np.zeros(2, dtype)
    np.testing.assert_array_equal(decode(empty), zeros)  # (TF's make_ndarray: str "")


@given(hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.uint16,
                                   np.int32, np.int64, np.uint64, np.bool_]),
                  hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)))
def test_any_array_survives_tensorflow_and_back(array: np.ndarray):
    proto = tf.make_tensor_proto(array)
    got = decode(proto)
    assert got.dtype == array.dtype
    np.testing.assert_array_equal(got, array)
    back = tf.make_ndarray(tensor_proto(array, "out"))
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_tensor_content_is_a_view_of_the_message():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = decode(tf.make_tensor_proto(array.repeat(100, axis=1)))  # TF writes content
    assert not got.flags.owndata and not got.flags.writeable


def test_outputs_tensorflow_reads_back():
    outputs = {"p": np.array([[0.25, 0.75]], np.float32),
               "n": np.array([[3]], np.int64), "s": np.array([[b"x", b"yz"]], dtype=object),
               "h": np.array([[1.5, -2.0]], tf.bfloat16.as_numpy_dtype)}  # half_val bits
    meta = ModelMetadata("m", 3, "sig", (), (), "p", ())
    response = encode_predict_response(meta, outputs)
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("m", 3, "sig")
    for name, array in outputs.items():
        np.testing.assert_array_equal(tf.make_ndarray(response.outputs[name]), array)
    only = encode_predict_response(meta, outputs, ["s"])
    assert list(only.outputs) == ["s"]
    assert list(response.outputs["p"].float_val) == [0.25, 0.75]  # typed, as TF Serving
    assert list(response.outputs["n"].int64_val) == [3]
    assert not response.outputs["p"].tensor_content
    with pytest.raises(BadRequest, match=r"output tensor alias not found in signature: q "
                                         r"Outputs expected to be in the set \{h,n,p,s\}\."):
        encode_predict_response(meta, outputs, ["q"])
    with pytest.raises(BadRequest, match="duplicate output tensor alias: p"):
        encode_predict_response(meta, outputs, ["p", "p"])
    with pytest.raises(ModelFailed, match="complex64"):
        tensor_proto(np.zeros(1, np.complex64), "output 'c'")


def request(**tensors) -> predict_pb2.PredictRequest:
    message = predict_pb2.PredictRequest()
    message.model_spec.name, message.model_spec.signature_name = "m", "sig"
    for name, proto in tensors.items():
        message.inputs[name].CopyFrom(proto)
    message.output_filter.append("y")
    return message


def test_predict_request_inputs_by_name():
    parsed = parse(request(a=tf.make_tensor_proto(np.ones((2, 1), np.float32)),
                           b=tf.make_tensor_proto([[b"x"], [b"y"]])))
    assert parsed.signature_name == "sig" and parsed.output_filter == ("y",)
    inputs = parsed.decode()
    assert inputs["a"].shape == (2, 1) and inputs["b"].tolist() == [[b"x"], [b"y"]]


@pytest.mark.parametrize(
    ("proto", "match"),
    [
        (tf.make_tensor_proto(np.zeros(2, np.complex64)), "dtype DT_COMPLEX64 is not supported"),
        (tf.make_tensor_proto(np.zeros(2, np.int32), dtype=tf.qint8), "dtype DT_QINT8"),
        (tf.make_tensor_proto(np.zeros(2, np.complex128)), "dtype DT_COMPLEX128"),
    ],
)
def test_unsupported_dtypes_are_named(proto, match):
    with pytest.raises(BadRequest, match=f"input 'x': {match}"):
        tensor_input("x", proto)
    invalid = tf.make_tensor_proto([1.0])
    invalid.dtype = 0
    with pytest.raises(BadRequest, match="DT_INVALID is not supported; use one of DT_HALF"):
        tensor_input("x", invalid)


def test_value_errors_are_clear_400s():
    too_many = typed(np.array([1.0, 2.0, 3.0], np.float32))
    too_many.tensor_shape.dim[0].size = 2
    with pytest.raises(BadRequest, match=r"3 values in float_val for shape \[2\]"):
        decode(too_many)
    short = tf.make_tensor_proto(np.zeros((2, 50), np.float32))
    short.tensor_shape.dim[1].size = 60
    with pytest.raises(BadRequest, match=r"tensor_content has 400 bytes, but "
                                         r"float32\[2, 60\] needs 480"):
        decode(short)
    wide = tf.make_tensor_proto([1], dtype=tf.uint8)
    wide.int_val[0] = 300
    with pytest.raises(BadRequest, match=r"int_val holds values out of range for DT_UINT8"):
        decode(wide)
    strings = tf.make_tensor_proto([b"a"])
    strings.tensor_content = b"a"
    with pytest.raises(BadRequest, match="DT_STRING values go in string_val"):
        decode(strings)
    unknown = tf.make_tensor_proto([1.0])
    unknown.tensor_shape.unknown_rank = True
    with pytest.raises(BadRequest, match="shape must be known"):
        decode(unknown)
    negative = tf.make_tensor_proto([1.0])
    negative.tensor_shape.dim[0].size = -1
    with pytest.raises(BadRequest, match="non-negative"):
        decode(negative)
    with pytest.raises(BadRequest, match="no inputs"):
        parse(predict_pb2.PredictRequest())


def test_limits_are_checked_before_a_value_is_read():
    one = tf.make_tensor_proto([0.5], shape=[300, 1])
    with pytest.raises(PayloadTooLarge, match="input 'x' has 300 rows, the limit is 256"):
        parse(request(x=one))
    huge = tf.make_tensor_proto([0.5], shape=[2, 2**40])  # a 20-byte message
    with pytest.raises(PayloadTooLarge, match=r"the inputs have 2199023255552 elements"):
        parse(request(x=huge))
    strings = tf.make_tensor_proto([b"z"], shape=[1, 257])  # strings as V2 BYTES: max_rows
    with pytest.raises(PayloadTooLarge, match=r"input 'x' has 257 DT_STRING elements, the "
                                              r"limit is 256 \(max_rows\)"):
        parse(request(x=strings))
    ok = parse(request(x=tf.make_tensor_proto([0.5], shape=[4, 1000])))
    assert ok.decoded_bytes == 4 * 1000 * 4 + 4  # the budget's charge: the array, the value
    assert parse(request(x=tf.make_tensor_proto(np.zeros((4, 1000), np.float32)))
                 ).decoded_bytes == 0  # tensor_content: a view


@pytest.mark.parametrize(
    "proto",
    [
        tf.make_tensor_proto([0.5], shape=[4, 250_000]),  # one value fills a 4 MB tensor
        tf.make_tensor_proto(np.arange(1000) % 100, dtype=tf.int8, shape=[4, 250_000]),
        tf.make_tensor_proto(np.ones(1000, np.float16), shape=[4, 250_000]),
        tf.make_tensor_proto([b"x" * 100_000, b"y" * 1000], shape=[2, 128]),
    ],
    ids=["float", "int8", "half", "strings"],
)
def test_decoding_takes_no_more_than_the_budget_is_charged(proto):
    parsed = parse(request(x=proto))
    tracemalloc.start()
    try:
        decoded = parsed.decode()["x"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded.shape == tuple(d.size for d in proto.tensor_shape.dim)
    # + objects' headers, and what other threads of a long test session (Ray's,
    # gRPC's) allocate meanwhile: tracemalloc counts every thread. (The old
    # decoding peaked at 2-3 times the charge.)
    assert decoded.nbytes <= peak <= parsed.decoded_bytes * 1.25 + 64 * 1024


EXAMPLES = ModelMetadata("ex", 1, "serving_default", (TensorSpec("inputs", "string", (None,)),),
                         (TensorSpec("scores", "float32", (None, 2)),), "scores", (),
                         method_name=CLASSIFY)


def example(**features: list[float]) -> tf.train.Example:
    return tf.train.Example(features=tf.train.Features(feature={
        k: tf.train.Feature(float_list=tf.train.FloatList(value=v)) for k, v in features.items()}))


def test_examples_serialized_with_their_context():
    listed = input_pb2.Input()
    listed.example_list.examples.extend([example(x=[1.0]), example(x=[2.0])])
    (serialized,) = parse_examples(listed, EXAMPLES, "classify", 256).values()
    assert [tf.train.Example.FromString(s) for s in serialized] == [example(x=[1.0]),
                                                                    example(x=[2.0])]
    with_context = input_pb2.Input()
    with_context.example_list_with_context.context.CopyFrom(example(c=[9.0], x=[0.0]))
    with_context.example_list_with_context.examples.extend([example(x=[1.0])] * 3)
    (serialized,) = parse_examples(with_context, EXAMPLES, "classify", 256).values()
    assert tf.train.Example.FromString(serialized[0]) == example(c=[9.0], x=[1.0])  # own wins
    assert examples_bytes(with_context) >= 3 * example(c=[9.0], x=[0.0]).ByteSize()


@pytest.mark.parametrize(
    ("make", "verb", "error"),
    [
        (lambda i: None, "classify", "neither example_list nor"),
        (lambda i: i.example_list.SetInParent(), "classify", "example_list has no examples"),
        (lambda i: i.example_list.examples.add(), "regress", "not a regress signature"),
        (lambda i: i.example_list.examples.extend([example()] * 257), "classify",
         "example_list.examples has 257 rows"),
    ],
)
def test_example_errors(make, verb, error):
    message = input_pb2.Input()
    make(message)
    with pytest.raises((BadRequest, PayloadTooLarge), match=error):
        parse_examples(message, EXAMPLES, verb, 256)


def test_classify_and_regress_results():
    meta = ModelMetadata("ex", 2, "serving_default", (), (), "scores", (), method_name=REGRESS)
    classified = encode_classify_response(meta, {
        "classes": np.array([[b"a", b"b"]], dtype=object),
        "scores": np.array([[0.25, 0.75]], np.float32)})
    assert classified.model_spec.version.value == 2
    assert classified.result == classification_pb2.ClassificationResult(classifications=[
        classification_pb2.Classifications(classes=[
            classification_pb2.Class(label="a", score=0.25),
            classification_pb2.Class(label="b", score=0.75)])])
    regressed = encode_regress_response(meta, {"outputs": np.array([[1.5], [2.5]], np.float32)})
    assert [r.value for r in regressed.result.regressions] == [1.5, 2.5]


def test_metadata_is_the_signature_def_map_in_an_any():
    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    signature.inputs["x"].CopyFrom(meta_graph_pb2.TensorInfo(
        name="x:0", dtype=tf.float32.as_datatype_enum,
        tensor_shape=tf.TensorShape([None, 2]).as_proto()))
    document = json_format.MessageToDict(signature, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
    meta = ModelMetadata("m", 4, "serving_default", (), (), "y", (),
                         signature_defs={"serving_default": document})
    response = model_metadata_response(meta, ["signature_def"])
    assert response.model_spec.name == "m" and response.model_spec.version.value == 4
    assert response.model_spec.signature_name == ""  # as TF Serving answers metadata
    defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(defs)
    assert defs.signature_def["serving_default"] == signature
    with pytest.raises(BadRequest, match="must name a metadata_field"):
        model_metadata_response(meta, [])
    with pytest.raises(BadRequest, match="metadata_field 'other' is not supported"):
        model_metadata_response(meta, ["signature_def", "other"])


def test_status_names_each_state_and_error():
    response = model_status_response([VersionStatus(1, "AVAILABLE"),
                                      VersionStatus(2, "END", "no saved_model.pb")])
    (newest, oldest) = response.model_version_status
    state = get_model_status_pb2.ModelVersionStatus.State
    assert (newest.version, newest.state, newest.status.error_code,
            newest.status.error_message) == (2, state.END, error_codes_pb2.UNKNOWN,
                                             "no saved_model.pb")
    assert (oldest.version, oldest.state, oldest.status.error_code) == (
        1, state.AVAILABLE, error_codes_pb2.OK)


def test_importing_the_codec_does_not_import_tensorflow():
    """The ingress and Serve's gRPC proxy never run a model: the protos load
    without TensorFlow (3 s and 600 MB), and TensorFlow still imports after."""
    code = ("import sys; import deployments.ingress.protocols.tfserving_grpc; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
            "assert 'tensorflow.core.framework.tensor_pb2' in sys.modules; "
            "from tensorflow_serving.apis import predict_pb2; "
            "import tensorflow as tf; "
            "print(tf.make_ndarray(tf.make_tensor_proto([1.5])).tolist())")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("[1.5]")
