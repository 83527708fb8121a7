import json

import numpy as np
import pytest

from deployments.codecs.tensor import (
    columns_by_input,
    json_inputs,
    parse_json,
    rows_by_input,
    strings_to_array,
)
from deployments.errors import BadRequest, PayloadTooLarge
from deployments.signature import ModelMetadata, TensorSpec

ONE = ModelMetadata("one", 1, "serving_default", (TensorSpec("x", "float32", (None, 1, 2)),),
                    (), "y", ())
TABULAR = ModelMetadata("tab", 1, "serving_default", (
    TensorSpec("age", "float32", (None, 1)), TensorSpec("city", "string", (None, 1)),
    TensorSpec("image", "float32", (None, 2, 2, 1))), (), "y", (), image_input="image")


def test_rows_of_one_input_become_one_array():
    doc = parse_json(json.dumps({"instances": [[[1, 2]], {"x": [[3, 4.5]]}]}).encode())
    parsed = json_inputs(rows_by_input(doc["instances"], ONE, 256), ONE, "instances")
    assert parsed.arrays["x"].shape == (2, 1, 2) and parsed.images is None
    np.testing.assert_array_equal(parsed.arrays["x"][1, 0], [3, 4.5])


def test_rows_of_several_inputs_by_name_numbers_text_and_images():
    rows = [{"age": [31.5], "city": ["Lyon"], "image": {"b64": "aGk="}},
            {"age": [7], "city": [{"b64": "/w=="}], "image": {"b64": "aGk="}}]
    parsed = json_inputs(rows_by_input(rows, TABULAR, 256), TABULAR, "instances")
    assert parsed.arrays["age"].tolist() == [[31.5], [7.0]]
    assert parsed.arrays["city"].tolist() == [[b"Lyon"], [b"\xff"]]
    assert parsed.images == [b"hi", b"hi"]  # decoded by the image codec later


def test_columns_by_name_and_bare_for_one_input():
    assert set(columns_by_input({"age": [[1]], "city": [["a"]]}, TABULAR, 256)) == {"age",
                                                                                   "city"}
    assert columns_by_input([[[1, 2]]], ONE, 256) == {"x": [[[1, 2]]]}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (3, "must be a non-empty list"),
        ([], "must be a non-empty list"),
        ([[1.0]], r"instances\"\[0\] must name every input"),
        ([{"age": [1]}], "missing 'city', 'image'"),
        ([{"age": [1], "city": ["a"], "image": [[[0]]], "x": 1}], "unknown 'x'"),
    ],
)
def test_rows_must_name_every_input(rows, message):
    with pytest.raises(BadRequest, match=message):
        rows_by_input(rows, TABULAR, 256)


def test_rows_are_counted_before_they_are_read():
    with pytest.raises(PayloadTooLarge, match="300 rows, the limit is 256"):
        rows_by_input([{"wrong": 1}] * 300, TABULAR, 256)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([[1, 2], [3]], "ragged"),
        ([["a", "b"]], "only numbers"),
        ([{"x": 1}], "only numbers"),
    ],
)
def test_bad_numbers(values, message):
    with pytest.raises(BadRequest, match=message):
        json_inputs({"x": values}, ONE, "instances")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([["a"], ["b", "c"]], "ragged"),
        ([[1]], "only strings"),
        ([["\ud800"]], "not valid Unicode"),
        ([[{"b64": "***"}]], "not valid base64"),
        ("[" * 70 + '"a"' + "]" * 70, "nested deeper than 64"),
    ],
)
def test_bad_strings(values, message):
    if isinstance(values, str):
        values = json.loads(values)
    with pytest.raises(BadRequest, match=message):
        strings_to_array(values, "city")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty request body"),
        (b"{", "malformed JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
    ],
)
def test_unparseable_bodies(body, message):
    with pytest.raises(BadRequest, match=message):
        parse_json(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"instances": [NaN]}', "NaN is not a number JSON allows"),
        (b'{"instances": [Infinity]}', "Infinity is not a number"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"instances": [' + b"1" * 5000 + b"]}", "malformed JSON: Exceeds the limit"),
    ],
)
def test_json_that_python_would_accept_or_crash_on(body, message):
    with pytest.raises(BadRequest, match=message):
        parse_json(body)
