import numpy as np
import pytest

from deployments.codecs.errors import BadRequest, PayloadTooLarge
from deployments.signature import (
    ImageGeometry,
    ModelMetadata,
    TensorSpec,
    check_batch,
    image_geometry,
)

IMAGE = TensorSpec("image", "float32", (None, 28, 28, 1))


def metadata(*inputs: TensorSpec, takes_images: bool = True) -> ModelMetadata:
    out = TensorSpec("probabilities", "float32", (None, 10))
    return ModelMetadata("m", 1, "serving_default", inputs, (out,), "probabilities",
                         tuple(str(i) for i in range(10)), takes_images=takes_images)


def test_matching_float32_batch_is_not_copied():
    batch = np.zeros((3, 28, 28, 1), np.float32)
    assert check_batch(batch, IMAGE) is batch


def test_ints_are_cast_to_the_model_dtype():
    checked = check_batch(np.zeros((1, 28, 28, 1), np.int64), IMAGE)
    assert checked.dtype == np.float32


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 28, 28), np.float32),
         r"shape \[2, 28, 28\], expected float32\[N, 28, 28, 1\]"),
        (np.zeros((2, 28, 27, 1), np.float32), "expected float32"),
        (np.zeros((0, 28, 28, 1), np.float32), "empty batch"),
        (np.array([["a"]]), "dtype <U1"),
        ([[1.0]], "expected a numpy array"),
    ],
)
def test_rejections_name_the_expected_shape(array, message):
    with pytest.raises(BadRequest, match=message):
        check_batch(array, IMAGE)


def test_too_many_rows_is_413():
    with pytest.raises(PayloadTooLarge, match="5 rows, the limit is 4"):
        check_batch(np.zeros((5, 28, 28, 1), np.float32), IMAGE, max_rows=4)


def test_floats_are_refused_for_integer_models():
    with pytest.raises(BadRequest, match="dtype float64"):
        check_batch(np.zeros((1, 3)), TensorSpec("ids", "int32", (None, 3)))


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
    meta = metadata(TensorSpec("x", "float32", (None, 64)), takes_images=False)
    with pytest.raises(BadRequest, match=r"takes tensors \(float32\[N, 64\]\), not encoded"):
        meta.image_geometry()


def test_several_inputs_need_a_name():
    meta = metadata(IMAGE, TensorSpec("mask", "float32", (None, 28, 28, 1)))
    with pytest.raises(BadRequest, match="several inputs"):
        _ = meta.input


def test_bools_feed_float_models():
    checked = check_batch(np.ones((1, 28, 28, 1), dtype=bool), IMAGE)
    assert checked.dtype == np.float32 and checked.min() == 1.0


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e39])
def test_non_finite_values_are_refused(value):
    batch = np.zeros((1, 28, 28, 1))
    batch[0, 3, 4, 0] = value
    with pytest.raises(BadRequest, match="NaN or infinite"):
        check_batch(batch, IMAGE)


def test_too_many_numbers_is_413():
    spec = TensorSpec("x", "float32", (None, 64))
    with pytest.raises(PayloadTooLarge, match="has 640 numbers, the limit is 600"):
        check_batch(np.zeros((10, 64), np.float32), spec, max_elements=600)
    assert check_batch(np.zeros((9, 64), np.float32), spec, max_elements=600).shape == (9, 64)
