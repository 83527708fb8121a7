import numpy as np
import pytest

from deployments.errors import BadRequest, PayloadTooLarge
from deployments.signature import (
    ModelMetadata,
    TensorSpec,
    check_inputs,
    check_tensor,
    image_geometry,
)
from deployments.types import ImageGeometry

IMAGE = TensorSpec("image", "float32", (None, 28, 28, 1))


def metadata(*inputs: TensorSpec, image_input: str | None = "image") -> ModelMetadata:
    out = TensorSpec("probabilities", "float32", (None, 10))
    return ModelMetadata("m", 1, "serving_default", inputs, (out,), "probabilities",
                         tuple(str(i) for i in range(10)), image_input=image_input)


def test_matching_float32_batch_is_not_copied():
    batch = np.zeros((3, 28, 28, 1), np.float32)
    assert check_tensor(batch, IMAGE) is batch


def test_ints_are_cast_to_the_model_dtype():
    checked = check_tensor(np.zeros((1, 28, 28, 1), np.int64), IMAGE)
    assert checked.dtype == np.float32


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 28, 28), np.float32),
         r"shape \[2, 28, 28\], expected float32\[N, 28, 28, 1\]"),
        (np.zeros((2, 28, 27, 1), np.float32), "expected float32"),
        (np.zeros((0, 28, 28, 1), np.float32), "empty batch"),
        (np.full((1, 28, 28, 1), "a"), "dtype <U1"),
        ([[1.0]], "expected a numpy array"),
    ],
)
def test_rejections_name_the_expected_shape(array, message):
    with pytest.raises(BadRequest, match=message):
        check_tensor(array, IMAGE)


def test_too_many_rows_is_413():
    with pytest.raises(PayloadTooLarge, match="5 rows, the limit is 4"):
        check_inputs({"image": np.zeros((5, 28, 28, 1), np.float32)}, metadata(IMAGE),
                     max_rows=4)


def test_floats_are_refused_for_integer_inputs():
    with pytest.raises(BadRequest, match="dtype float64"):
        check_tensor(np.zeros((1, 3)), TensorSpec("ids", "int32", (None, 3)))


@pytest.mark.parametrize(("dtype", "values"), [
    ("int8", [127, 128]), ("uint8", [-1, 3]), ("int32", [2**31, 0]), ("uint16", [70000, 0]),
])
def test_integers_out_of_the_inputs_range_are_refused_not_wrapped(dtype, values):
    with pytest.raises(BadRequest, match=rf"'ids' has values out of range for {dtype}"):
        check_tensor(np.array([values]), TensorSpec("ids", dtype, (None, 2)))


def test_integers_that_fit_are_cast():
    checked = check_tensor(np.array([[0, 255]]), TensorSpec("ids", "uint8", (None, 2)))
    assert checked.dtype == np.uint8 and checked.tolist() == [[0, 255]]


def test_bools_feed_bool_and_float_inputs_only():
    flags = TensorSpec("flags", "bool", (None, 2))
    assert check_tensor(np.array([[True, False]]), flags).dtype == bool
    with pytest.raises(BadRequest, match="dtype int64"):
        check_tensor(np.array([[1, 0]]), flags)
    assert check_tensor(np.ones((1, 28, 28, 1), dtype=bool), IMAGE).max() == 1.0


def test_strings_become_bytes_objects():
    text = TensorSpec("text", "string", (None,))
    checked = check_tensor(np.array(["héllo", "ok"]), text)
    assert checked.dtype == object and checked.tolist() == ["héllo".encode(), b"ok"]
    assert check_tensor(np.array([b"\xff"], dtype=object), text).tolist() == [b"\xff"]
    with pytest.raises(BadRequest, match=r"expected string\[N\] \(text or bytes\)"):
        check_tensor(np.array([1.0]), text)
    with pytest.raises(BadRequest, match="holds a int"):
        check_tensor(np.array([1], dtype=object), text)


def test_every_input_is_needed_with_the_same_rows():
    meta = metadata(IMAGE, TensorSpec("age", "float32", (None, 1)))
    image, age = np.zeros((2, 28, 28, 1), np.float32), np.zeros((2, 1), np.float32)
    assert set(check_inputs({"image": image, "age": age}, meta)) == {"image", "age"}
    with pytest.raises(BadRequest, match=r"missing 'age'; unknown 'x'"):
        check_inputs({"image": image, "x": age}, meta)
    with pytest.raises(BadRequest, match="different numbers of rows: 'image' 2, 'age' 1"):
        check_inputs({"image": image, "age": age[:1]}, meta)


def test_image_geometry_from_signature():
    assert metadata(IMAGE).image_geometry() == ImageGeometry(28, 28, 1)


@pytest.mark.parametrize("shape", [(None, 10), (None, None, None, 3), (None, 28, 28, 2)])
def test_only_image_shaped_inputs_have_a_geometry(shape):
    with pytest.raises(ValueError, match="not images"):
        image_geometry(TensorSpec("x", "float32", shape))


def test_image_inputs_must_be_floats():
    # Images decode to [0, 1] floats: a uint8 image model would refuse every one.
    with pytest.raises(ValueError, match=r"uint8\[N, 28, 28, 1\]: images are decoded"):
        image_geometry(TensorSpec("x", "uint8", (None, 28, 28, 1)))


def test_tensor_models_refuse_images():
    meta = metadata(TensorSpec("x", "float32", (None, 64)), image_input=None)
    with pytest.raises(BadRequest, match=r"takes tensors \('x': float32\[N, 64\]\), not encoded"):
        meta.image_geometry()


def test_several_inputs_need_names():
    meta = metadata(IMAGE, TensorSpec("mask", "float32", (None, 28, 28, 1)))
    with pytest.raises(BadRequest, match="several inputs"):
        _ = meta.single_input


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e39])
def test_non_finite_values_are_refused(value):
    batch = np.zeros((1, 28, 28, 1))
    batch[0, 3, 4, 0] = value
    with pytest.raises(BadRequest, match="NaN or infinite"):
        check_tensor(batch, IMAGE)


@pytest.mark.parametrize("finite", [False, True])
def test_a_cast_that_overflows_is_refused_even_from_finite_values(finite):
    batch = np.zeros((1, 28, 28, 1))  # float64: 1e39 is finite here, not as float32
    batch[0, 3, 4, 0] = 1e39
    with pytest.raises(BadRequest, match="NaN or infinite"):
        check_tensor(batch, IMAGE, finite=finite)


def test_inputs_checked_upstream_pass_unscanned_and_anything_else_is_checked():
    mask = TensorSpec("mask", "int32", (None, 4))
    meta = metadata(IMAGE, mask)
    names = ["image", "mask"]
    checked = check_inputs({"image": np.zeros((2, 28, 28, 1)),
                            "mask": np.zeros((2, 4), np.int64)}, meta)  # both cast
    checked["image"][0, 0, 0, 0] = np.nan  # what only a value scan would catch
    again = check_inputs(checked, meta, finite=names)
    assert all(again[n] is checked[n] for n in names)  # as they are: not copied, not scanned
    recast = check_inputs({**checked, "mask": checked["mask"].astype(np.int64)}, meta,
                          finite=names)
    assert recast["mask"].dtype == np.int32
    for laid_out_otherwise in ({"image": checked["image"]},  # an input missing
                               {**checked, "mask": np.zeros((3, 4), np.int32)},  # rows differ
                               {**checked, "mask": np.zeros((2, 5), np.int32)},  # shape
                               {"mask": np.zeros((0, 4), np.int32),
                                "image": np.zeros((0, 28, 28, 1), np.float32)}):  # empty
        with pytest.raises(BadRequest):
            check_inputs(laid_out_otherwise, meta, finite=names)
    text = metadata(TensorSpec("text", "string", (None,)), image_input=None)
    assert check_inputs({"text": np.array(["a"])}, text, finite=["text"])["text"][0] == b"a"


def test_too_many_numbers_is_413():
    meta = metadata(TensorSpec("x", "float32", (None, 64)), image_input=None)
    with pytest.raises(PayloadTooLarge, match="has 640 numbers, the limit is 600"):
        check_inputs({"x": np.zeros((10, 64), np.float32)}, meta, max_elements=600)
    assert check_inputs({"x": np.zeros((9, 64), np.float32)}, meta,
                        max_elements=600)["x"].shape == (9, 64)
