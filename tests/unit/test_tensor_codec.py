import json

import numpy as np
import pytest

from deployments.codecs.errors import BadRequest
from deployments.codecs.tensor import instances_to_array, parse_json


def test_instances_become_one_array():
    doc = parse_json(json.dumps({"instances": [[[1, 2]], [[3, 4.5]]]}).encode())
    array = instances_to_array(doc, 256)
    assert array.shape == (2, 1, 2)
    np.testing.assert_array_equal(array[1, 0], [3, 4.5])


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
    ("doc", "message"),
    [
        ([1, 2], 'with an "instances" list'),
        ({"inputs": [1]}, 'with an "instances" list'),
        ({"instances": 3}, "must be a list"),
        ({"instances": []}, "is empty"),
        ({"instances": [[1, 2], [3]]}, "ragged"),
        ({"instances": [["a", "b"]]}, "only numbers"),
        ({"instances": [{"x": 1}]}, "only numbers"),
    ],
)
def test_bad_documents(doc, message):
    with pytest.raises(BadRequest, match=message):
        instances_to_array(doc, 256)


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
