import base64
import json
from typing import Any

import numpy as np
import pytest

from deployments.codecs.tfserving import (
    encode_classify_response,
    encode_predict_response,
    encode_regress_response,
    examples_input,
    model_status,
    parse_examples_request,
    parse_predict_request,
    signature_name,
)
from deployments.errors import BadRequest, ModelFailed, PayloadTooLarge
from deployments.signature import CLASSIFY, ModelMetadata, TensorSpec
from deployments.versions import VersionStatus

IMAGES = ModelMetadata("m", 1, "serving_default", (TensorSpec("image", "float32", (None, 2)),),
                       (), "y", (), image_input="image")


def test_row_and_columnar_values():
    rows = parse_predict_request({"instances": [[1, 2], {"image": [3, 4]}]}, IMAGES, 256)
    assert not rows.columnar and rows.inputs.arrays["image"].tolist() == [[1, 2], [3, 4]]
    columns = parse_predict_request({"inputs": {"image": [[1, 2]]}}, IMAGES, 256)
    assert columns.columnar and columns.inputs.arrays["image"].shape == (1, 2)


def test_b64_values_of_the_image_input_are_encoded_images():
    encoded = base64.b64encode(b"\x89PNG").decode()
    request = parse_predict_request({"instances": [{"b64": encoded}, {"image": {"b64": ""}}]},
                                    IMAGES, 256)
    assert request.inputs.images == [b"\x89PNG", b""] and not request.inputs.arrays


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "exactly one of"),
        ({"instances": [], "inputs": []}, "exactly one of"),
        ({"instances": {}}, "non-empty list"),
        ({"inputs": {"other": [1]}}, "unknown 'other'"),
        ({"inputs": []}, "non-empty list"),
        ({"inputs": {"image": {"x": 1}}}, "non-empty list or a value"),
        ({"instances": [{"b64": "AA=="}, [1, 2]]}, "mix of"),
        ({"instances": [{"b64": 5}]}, "must be a base64 string"),
        ({"instances": [{"b64": "@@"}]}, "not valid base64"),
    ],
)
def test_bad_requests(document, message):
    with pytest.raises(BadRequest, match=message):
        parse_predict_request(document, IMAGES, 256)


def test_the_signature_is_read_before_the_inputs():
    assert signature_name({"signature_name": "sig", "instances": []}) == "sig"
    assert signature_name({"instances": []}) is None
    with pytest.raises(BadRequest, match="must be a JSON object"):
        signature_name([])
    with pytest.raises(BadRequest, match="must be a string"):
        signature_name({"signature_name": 1, "instances": [[1, 2]]})


def test_rows_are_counted_before_any_is_read():
    with pytest.raises(PayloadTooLarge, match="300 rows, the limit is 256"):
        parse_predict_request({"instances": [{"wrong": 1}] * 300}, IMAGES, 256)
    with pytest.raises(PayloadTooLarge, match="300 rows, the limit is 256"):
        parse_predict_request({"inputs": [[0]] * 300}, IMAGES, 256)


def predict_json(outputs: dict[str, np.ndarray], columnar: bool) -> Any:
    return json.loads(encode_predict_response(outputs, columnar))


def test_responses_name_outputs_only_when_several():
    one = {"y": np.array([[1.0], [2.0]])}
    assert predict_json(one, columnar=False) == {"predictions": [[1.0], [2.0]]}
    assert predict_json(one, columnar=True) == {"outputs": [[1.0], [2.0]]}
    two = {"y": np.array([1, 2]), "z": np.array([3, 4])}
    assert predict_json(two, columnar=False) == {
        "predictions": [{"y": 1, "z": 3}, {"y": 2, "z": 4}]}
    assert predict_json(two, columnar=True) == {"outputs": {"y": [1, 2], "z": [3, 4]}}
    grid = {"y": np.arange(12, dtype=np.float32).reshape(2, 3, 2), "z": np.array([7, 8])}
    assert predict_json(grid, columnar=False)["predictions"][1] == {
        "y": [[6.0, 7.0], [8.0, 9.0], [10.0, 11.0]], "z": 8}


def test_status_lists_newest_first():
    versions = [v["version"] for v in model_status(
        [VersionStatus(v, "AVAILABLE") for v in (1, 3, 2)])["model_version_status"]]
    assert versions == ["3", "2", "1"]


def test_string_outputs_are_utf8_or_b64_by_name():
    outputs = {"label": np.array([b"cat", "d\u00f6g"], dtype=object),
               "raw_bytes": np.array([b"\xff"], dtype=object)}
    rows = predict_json({"label": outputs["label"]}, columnar=False)
    assert rows == {"predictions": ["cat", "d\u00f6g"]}
    columns = predict_json({"raw_bytes": outputs["raw_bytes"]}, columnar=True)
    assert columns == {"outputs": [{"b64": "/w=="}]}


def test_non_finite_outputs_render_as_tf_serving_writes_them():
    body = encode_predict_response({"y": np.array([np.nan, -np.inf, np.inf])}, columnar=False)
    assert body == b'{"predictions":[NaN,-Infinity,Infinity]}'


@pytest.mark.parametrize(("value", "dtype", "text"), [
    (0.1, np.float32, "0.1"),  # not 0.10000000149011612, its float64 digits
    (1 / 3, np.float32, "0.333333343"),  # six digits do not read back: nine
    (0.1234567, np.float32, "0.123456702"),
    (3.0, np.float32, "3.0"), (-0.0, np.float32, "-0.0"), (2.5, np.float16, "2.5"),
    (9000000.0, np.float32, "9e+06"), (0.00003, np.float32, "3e-05"),
    (0.1, np.float64, "0.1"), (1 / 3, np.float64, "0.33333333333333331"),
])
def test_floats_are_written_with_tf_servings_digits(value, dtype, text):
    body = encode_predict_response({"y": np.array([value], dtype)}, columnar=False)
    assert body == b'{"predictions":[' + text.encode() + b"]}"
    assert json.loads(body)["predictions"][0] == float(text)


def test_scalar_outputs_need_the_columnar_format():
    with pytest.raises(BadRequest, match="Tensor name: y has no shape information"):
        encode_predict_response({"y": np.array(1.0)}, columnar=False)
    assert predict_json({"y": np.array(1.0)}, columnar=True) == {"outputs": 1.0}


CLASSIFIER = ModelMetadata("c", 1, "serving_default", (TensorSpec("inputs", "string", (None,)),),
                           (TensorSpec("scores", "float32", (None, 2)),), "scores", (),
                           method_name=CLASSIFY)


def test_examples_become_the_signatures_serialized_input():
    encoded = parse_examples_request({"examples": [{"x": 1.0}, {"x": 2.0}]},
                                     CLASSIFIER, "classify", 256, 2**26)
    (examples,) = examples_input(CLASSIFIER, encoded.joined()).values()
    assert examples.dtype == object and examples.shape == (2,)
    assert all(isinstance(e, bytes) and b"x" in e for e in examples)


@pytest.mark.parametrize(
    ("document", "verb", "error", "message"),
    [
        ({"examples": [{}]}, "regress", BadRequest, "Expected one output Tensor named "
                                                    "'outputs'.*not a regress signature"),
        ({"examples": []}, "classify", BadRequest, "non-empty list"),
        ({"instances": [1]}, "classify", BadRequest, '"examples" must be'),
        ({"examples": [{}] * 300}, "classify", PayloadTooLarge, "300 rows, the limit is 256"),
        ({"examples": [{"x": [1.0] * 600}, {"x": [1.0] * 500}]}, "classify", PayloadTooLarge,
         "1100 feature values .*, the limit is 1000"),
    ],
)
def test_bad_examples_requests(document, verb, error, message):
    with pytest.raises(error, match=message):
        parse_examples_request(document, CLASSIFIER, verb, 256, 1000)


def test_the_contexts_copies_are_counted_before_they_are_made():
    context = {"pad": "x" * 100_000}
    encoded = parse_examples_request({"examples": [{}] * 256, "context": context},
                                     CLASSIFIER, "classify", 256, 2**26)
    assert encoded.nbytes > 256 * 100_000  # what joining them will allocate...
    assert len(encoded.context) + sum(map(len, encoded.own)) < 101_000  # ...not done yet


def test_classify_and_regress_answer_in_tf_servings_shapes():
    classes = np.array([[b"no", b"yes"]] * 2, dtype=object)
    scores = np.array([[0.25, 0.75], [1.0, 0.0]], dtype=np.float32)
    assert encode_classify_response({"classes": classes, "scores": scores}) == \
        b'{"results":[[["no",0.25],["yes",0.75]],[["no",1.0],["yes",0.0]]]}'
    assert json.loads(encode_classify_response({"scores": scores[:1]})) == {
        "results": [[["", 0.25], ["", 0.75]]]}
    assert json.loads(encode_classify_response({"classes": classes[:1]})) == {
        "results": [[["no", 0.0], ["yes", 0.0]]]}
    assert encode_regress_response({"outputs": np.array([[1.5], [0.1]], np.float32)}) == \
        b'{"results":[1.5,0.1]}'  # a float32 0.1 with TF Serving's digits
    with pytest.raises(ModelFailed, match=r"shaped \[2, 2\]"):
        encode_regress_response({"outputs": scores})
    with pytest.raises(ModelFailed, match="neither a classes nor a scores output"):
        encode_classify_response({"other": scores})


def test_outputs_of_different_batch_sizes_need_the_columnar_format():
    outputs = {"box": np.zeros((1, 4)), "crops": np.zeros((3, 10))}
    with pytest.raises(BadRequest, match=r"Tensor name: crops has inconsistent batch size: 3 "
                                         r"expecting: 1"):
        encode_predict_response(outputs, columnar=False)
    assert predict_json(outputs, columnar=True)["outputs"]["crops"] == \
        np.zeros((3, 10)).tolist()
