import json
import struct
from dataclasses import replace
from functools import partial

import numpy as np
import pytest

from deployments.codecs.v2_json import encode_infer_response, parse_infer_request
from deployments.codecs.v2_tensor import (
    InferRequest,
    OutputTensor,
    RequestedOutput,
    classify,
    datatype_of,
    model_config,
    raw_to_tensor,
    select_outputs,
    tensor_to_raw,
)
from deployments.errors import BadRequest, PayloadTooLarge
from deployments.signature import ModelMetadata, TensorSpec

# Limits far above what these tests send.
parse = partial(parse_infer_request, max_rows=256, max_elements=2**26)

META = ModelMetadata(
    "m", 3, "serving_default", (TensorSpec("x", "float32", (None, 4)),),
    (TensorSpec("probabilities", "float32", (None, 3)),), "probabilities", ("a", "b", "c"),
)


def body(inputs: list[dict], blobs: list[bytes] = (), **extra) -> tuple[bytes, str | None]:
    header = json.dumps({"inputs": inputs, **extra}).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), str(len(header))


def test_json_tensors_flat_or_nested():
    for data in ([1, 2, 3, 4, 5, 6, 7, 8], [[1, 2, 3, 4], [5, 6, 7, 8]]):
        request = parse(*body([{"name": "x", "datatype": "FP32",
                                              "shape": [2, 4], "data": data}]))
        (inp,) = request.inputs
        assert inp.data.dtype == np.float32 and inp.data.shape == (2, 4)
        assert inp.data[1, 3] == 8


def test_binary_tensors_are_views_of_the_body():
    array = np.arange(8, dtype="<f4").reshape(2, 4)
    raw, length = body([{"name": "x", "datatype": "FP32", "shape": [2, 4],
                         "parameters": {"binary_data_size": array.nbytes}}], [array.tobytes()])
    (inp,) = parse(raw, length).inputs
    assert np.array_equal(inp.data, array)
    assert not inp.data.flags.owndata and not inp.data.flags.writeable  # no copy


def test_bytes_tensors_binary_and_json():
    blobs = [b"\x89PNG", b"", b"abc"]
    raw = b"".join(struct.pack("<I", len(b)) + b for b in blobs)
    request = parse(*body([{"name": "x", "datatype": "BYTES", "shape": [3],
                                          "parameters": {"binary_data_size": len(raw)}}],
                                        [raw]))
    assert request.inputs[0].data == blobs
    request = parse(*body([{"name": "x", "datatype": "BYTES", "shape": [2],
                                          "data": ["é", "b"]}]))
    assert request.inputs[0].data == ["é".encode(), b"b"]


def test_mixed_binary_and_json_inputs_keep_their_order():
    a, b = np.ones(2, "<i8"), np.zeros(3, "<f8")
    raw, length = body([
        {"name": "a", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}},
        {"name": "j", "datatype": "BOOL", "shape": [1], "data": [True]},
        {"name": "b", "datatype": "FP64", "shape": [3], "parameters": {"binary_data_size": 24}},
    ], [a.tobytes(), b.tobytes()])
    a_in, j_in, b_in = parse(raw, length).inputs
    assert a_in.data.tolist() == [1, 1] and j_in.data.tolist() == [True]
    assert b_in.data.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([], "inputs must not be empty"),
        ([{"datatype": "FP32", "shape": [1], "data": [1]}], r"inputs\[0\].name is required"),
        ([{"name": "x", "datatype": "FP8", "shape": [1], "data": [1]}], "unsupported datatype"),
        ([{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}], "must not be negative"),
        ([{"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}], "1 elements for shape"),
        ([{"name": "x", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}], "only numbers"),
        ([{"name": "x", "datatype": "FP32", "shape": [2], "data": [[1], [2, 3]]}], "ragged"),
        ([{"name": "x", "datatype": "UINT8", "shape": [1], "data": [300]}], "out of range"),
        ([{"name": "x", "datatype": "FP16", "shape": [1], "data": [1e10]}], "out of range"),
        ([{"name": "x", "datatype": "BOOL", "shape": [1], "data": [2]}], "only booleans"),
        ([{"name": "x", "datatype": "INT32", "shape": [1], "data": [1.7]}], "must be integers"),
        ([{"name": "x", "datatype": "FP32", "shape": [1], "data": [True]}], "only numbers"),
        ([{"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}], "must be strings"),
        ([{"name": "x", "datatype": "FP32", "shape": [1]}], 'neither "data"'),
        # Shapes numpy itself cannot make an array of, even an empty one.
        ([{"name": "x", "datatype": "FP32", "shape": [0, 2**70], "data": []}], "beyond any"),
        ([{"name": "x", "datatype": "FP32", "shape": [0, 2**62, 4], "data": []}], "beyond any"),
        ([{"name": "x", "datatype": "FP32", "shape": [1] * 65, "data": [1]}], "beyond any"),
    ],
)
def test_bad_json_requests(inputs, message):
    with pytest.raises(BadRequest, match=message):
        parse(*body(inputs))


@pytest.mark.parametrize(
    ("length", "message"),
    [("abc", "must be a byte count"), ("-1", "must be a byte count"),
     ("99999", "the body has only")],
)
def test_bad_header_lengths(length, message):
    raw, _ = body([{"name": "x", "datatype": "FP32", "shape": [1],
                    "parameters": {"binary_data_size": 4}}], [b"\0" * 4])
    with pytest.raises(BadRequest, match=message):
        parse(raw, length)


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"\x05\0\0\0ab", "runs past the data"), (b"\x01\0", "inside an element's length"),
     (b"\x01\0\0\0ab", "1 bytes left over")],
)
def test_bad_bytes_elements(raw, message):
    with pytest.raises(BadRequest, match=message):
        raw_to_tensor(raw, "BYTES", (1,), "input 'x'")


def test_outputs_round_trip_through_raw():
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = OutputTensor("y", "FP32", (2, 3), data)
    assert np.array_equal(raw_to_tensor(tensor_to_raw(tensor), "FP32", (2, 3), "y"), data)
    words = OutputTensor("w", "BYTES", (2,), [b"ab", b""])
    assert raw_to_tensor(tensor_to_raw(words), "BYTES", (2,), "w") == [b"ab", b""]


def test_response_json_and_binary():
    scores = np.array([[0.2, 0.5, 0.3]], np.float32)
    request = InferRequest(inputs=[], outputs=[RequestedOutput("probabilities", binary=True)])
    outputs = select_outputs(request, META, {"probabilities": scores})
    content, length = encode_infer_response(META, "id-1", outputs)
    header = json.loads(content[:length])
    assert header["model_version"] == "3" and header["id"] == "id-1"
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 12}
    assert np.array_equal(np.frombuffer(content[length:], "<f4"), scores.ravel())

    plain = select_outputs(InferRequest(inputs=[]), META, {"probabilities": scores})
    content, length = encode_infer_response(META, None, plain)
    assert length is None
    assert json.loads(content)["outputs"][0]["data"] == pytest.approx([0.2, 0.5, 0.3])


def test_bytes_outputs_that_are_not_text_go_in_binary_not_corrupted_in_json():
    png = b"\x89PNG\r\n\xff"
    text = OutputTensor("t", "BYTES", (2,), ["é".encode(), b"ok"])
    assert json.loads(encode_infer_response(META, None, [text])[0])["outputs"][0]["data"] == [
        "é", "ok"]
    blob = OutputTensor("image", "BYTES", (1,), [png])
    with pytest.raises(BadRequest, match=r"output 'image' holds bytes that are not UTF-8 text"
                                         r".*ask for it in binary"):
        encode_infer_response(META, None, [blob])
    blob.binary = True
    content, length = encode_infer_response(META, None, [blob])
    assert length is not None and content[length:] == struct.pack("<I", len(png)) + png


def test_classification_extension():
    scores = np.array([[0.2, 0.5, 0.3]], np.float32)
    assert classify(scores, META.labels, 2).tolist() == [[b"0.500000:1:b", b"0.300000:2:c"]]
    request = InferRequest(inputs=[], outputs=[RequestedOutput("probabilities",
                                                               classification=1)])
    (out,) = select_outputs(request, META, {"probabilities": scores})
    assert out.datatype == "BYTES" and out.shape == (1, 1)


def test_unknown_outputs_are_named():
    request = InferRequest(inputs=[], outputs=[RequestedOutput("nope")])
    with pytest.raises(BadRequest, match="has no output 'nope'"):
        select_outputs(request, META, {"probabilities": np.zeros((1, 3), np.float32)})


@pytest.mark.parametrize(("dtype", "name"), [(np.float32, "FP32"), (np.uint8, "UINT8"),
                                             (np.bool_, "BOOL"), (object, "BYTES")])
def test_datatype_names(dtype, name):
    assert datatype_of(dtype) == name


def test_any_numeric_output_is_classified_as_triton_does():
    """Labels where the output has them (the scores output), none elsewhere;
    integers as integers; strings and booleans hold no values to rank."""
    two_heads = ModelMetadata("r", 1, "serving_default", META.inputs,
                              (TensorSpec("value", "float32", (None,)),), "value", ())
    request = InferRequest(inputs=[], outputs=[RequestedOutput("value", classification=1),
                                               RequestedOutput("count", classification=2)])
    value, count = select_outputs(request, two_heads, {
        "value": np.array([[0.5, 2.0]], np.float32), "count": np.array([[3, 9, 1]], np.int64)})
    assert value.data == [b"2.000000:1"] and count.data == [b"9:1", b"3:0"]
    for dtype in (object, np.bool_):
        request = InferRequest(inputs=[], outputs=[RequestedOutput("s", classification=1)])
        with pytest.raises(BadRequest, match="holds no numbers to classify"):
            select_outputs(request, two_heads, {"s": np.ones((1, 2), dtype)})


def test_binary_flags_must_be_booleans():
    inputs = [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]
    with pytest.raises(BadRequest, match="binary_data_output must be true or false"):
        parse(*body(inputs, parameters={"binary_data_output": "false"}))
    with pytest.raises(BadRequest, match="binary_data must be true or false"):
        parse(*body(inputs, outputs=[{"name": "y",
                                                    "parameters": {"binary_data": 1}}]))


def test_string_outputs_become_bytes_elements():
    meta = ModelMetadata("s", 1, "serving_default", META.inputs,
                         (TensorSpec("label", "object", (None, 2)),), "label", ())
    names = np.array([[b"a", "é"], [b"", b"z"]], dtype=object)
    (out,) = select_outputs(InferRequest(inputs=[]), meta, {"label": names})
    assert out.datatype == "BYTES" and out.shape == (2, 2)
    assert out.data == [b"a", "é".encode(), b"", b"z"]
    content, _ = encode_infer_response(meta, None, [out])
    assert json.loads(content)["outputs"][0]["data"] == ["a", "é", "", "z"]


def test_tensor_sizes_are_checked_before_the_data_is_read():
    # Four million empty BYTES elements: refused from the shape, not split one by one.
    raw = b"\0\0\0\0" * (4 * 2**20)
    with pytest.raises(PayloadTooLarge, match="4194304 BYTES elements, the limit is 256"):
        parse(*body([{"name": "x", "datatype": "BYTES", "shape": [1, 4 * 2**20],
                      "parameters": {"binary_data_size": len(raw)}}], [raw]))
    with pytest.raises(PayloadTooLarge, match="300 rows, the limit is 256"):
        parse(*body([{"name": "x", "datatype": "FP32", "shape": [300, 1], "data": [0] * 300}]))
    with pytest.raises(PayloadTooLarge, match="numbers, the limit is 67108864"):
        parse(*body([{"name": "x", "datatype": "FP32", "shape": [1, 2**27], "data": []}]))


def test_model_config_dims_as_triton_takes_them():
    """Past the batch dimension; one value a row is dims [1] reshaped to []
    (Triton's dims may not be empty); NHWC only on an image's three dims."""
    meta = ModelMetadata("m", 1, "serving_default",
                         (TensorSpec("image", "float32", (None, 8, 8, 3)),
                          TensorSpec("id", "string", (None,))),
                         (TensorSpec("score", "float32", (None,)),), "score", (),
                         image_input="image")
    config = model_config(meta, 64)
    assert config["max_batch_size"] == 64
    assert config["input"] == [
        {"name": "image", "data_type": "TYPE_FP32", "dims": [8, 8, 3], "format": "FORMAT_NHWC"},
        {"name": "id", "data_type": "TYPE_STRING", "dims": [1], "reshape": {"shape": []}}]
    fixed = replace(meta, inputs=(TensorSpec("image", "float32", (1, 8, 8, 3)),))
    unbatched = model_config(fixed, 64)
    assert unbatched["max_batch_size"] == 0 and "format" not in unbatched["input"][0]
    assert unbatched["input"][0]["dims"] == [1, 8, 8, 3]
