"""The ``preprocessing`` block: its validation, the numbers it reduces to, and
each Keras preset against the family's own ``preprocess_input``."""

import importlib
import io

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from deployments.codecs.image import decode_images
from deployments.config import ModelArgs
from deployments.preprocessing import PRESETS, ImagePreprocessing, ShorterSide
from deployments.types import ImageGeometry

RGB = ImageGeometry(24, 32, 3)


def settings(**fields: object) -> ImagePreprocessing:
    return ImagePreprocessing.model_validate(fields)


def test_defaults_scale_to_the_unit_range_as_before():
    scale, offset = settings().affine(3)
    assert scale.dtype == np.float32 and (scale == np.float32(1 / 255)).all()
    assert (offset == 0).all()


def test_range_scale_offset_mean_and_std_fold_into_one_affine_map():
    scale, offset = settings(range=[-1, 1]).affine(1)
    np.testing.assert_allclose([0 * scale + offset, 255 * scale + offset], [[-1], [1]])
    scale, offset = settings(scale=2, offset=-3, mean=[1, 2, 3], std=[1, 2, 4]).affine(3)
    np.testing.assert_allclose(10 * scale + offset, [(20 - 3 - m) / s
                                                     for m, s in ((1, 1), (2, 2), (3, 4))])


def test_a_preset_sets_fields_and_explicit_fields_override_it():
    caffe = settings(preset="keras_resnet50")
    assert caffe.channel_order == "BGR" and caffe.mean == (103.939, 116.779, 123.68)
    assert settings(preset="keras_resnet50", channel_order="RGB").channel_order == "RGB"
    scaled = settings(preset="keras_mobilenet_v2", scale=1)  # replaces the preset's range
    assert scaled.range is None and scaled.scale == 1


def test_settings_survive_a_round_trip_through_their_dump():
    for given in ({}, {"preset": "keras_resnet50", "resize": "letterbox", "pad_value": 9},
                  {"preset": "keras_densenet", "scale": 2}):
        model = ModelArgs(name="m", path="m", input="image", preprocessing=given)
        assert ModelArgs.model_validate(model.model_dump()) == model
    tensors = ModelArgs(name="m", path="m")
    assert ModelArgs.model_validate(tensors.model_dump()) == tensors


def test_resize_policies_parse():
    assert settings().resize == "stretch"
    assert settings(resize="letterbox", pad_value=114).pad_value == 114
    assert settings(pad_value=[0, 0, 0]).resize == "stretch"  # the default, spelled out
    assert settings(resize={"shorter_side": 256}).resize == ShorterSide(shorter_side=256)


@pytest.mark.parametrize(("fields", "message"), [
    ({"range": [0, 1], "scale": 2}, "range or scale/offset, not both"),
    ({"offset": 1}, "offset needs scale"),
    ({"range": [1, -1]}, "low must be below high"),
    ({"scale": 0}, "scale 0"),
    ({"std": [1, 0, 1]}, "every value must be above 0"),
    ({"std": [1e-300]}, "beyond float32's range"),
    ({"range": [0, float("inf")]}, "finite number"),
    ({"mean": [1, 2, 3, 4]}, "at most 3 items"),
    ({"pad_value": 3}, "pad_value is for resize: letterbox"),
    ({"resize": "letterbox", "pad_value": 256}, "less than or equal to 255"),
    ({"resize": {"shorter_side": 256, "crop": "top"}}, "'center'"),
    ({"resize": "squash"}, "'stretch' or 'letterbox'"),
    ({"interpolation": "cubic"}, "'nearest', 'bilinear', 'bicubic'"),
    ({"preset": "keras_unknown"}, "keras_mobilenet"),
    ({"channel_order": "GBR"}, "'RGB' or 'BGR'"),
    ({"alpha": "grey"}, "'drop', 'white' or 'black'"),
    ({"scael": 1}, "Extra inputs are not permitted"),
])
def test_bad_settings_are_refused_with_the_reason(fields, message):
    with pytest.raises(ValidationError, match=message):
        settings(**fields)


def test_preprocessing_is_for_image_models():
    with pytest.raises(ValidationError, match="set input: image"):
        ModelArgs(name="m", path="m", preprocessing={"range": [-1, 1]})
    model = ModelArgs(name="m", path="m", input="image", preprocessing={"preset": "keras_vgg16"})
    assert model.preprocessing.channel_order == "BGR"


@pytest.mark.parametrize(("fields", "geometry", "message"), [
    ({"mean": [1, 2, 3]}, ImageGeometry(28, 28, 1), "mean has 3 values; the model's images "
                                                    "have 1 channel"),
    ({"std": [1, 2]}, RGB, "std has 2 values"),
    ({"channel_order": "BGR"}, ImageGeometry(28, 28, 1), "BGR needs a 3-channel"),
    ({"resize": "letterbox", "pad_value": [1, 2, 3]}, ImageGeometry(28, 28, 1),
     "an RGB pad_value needs a 3-channel"),
    ({"resize": {"shorter_side": 28}}, RGB, "shorter_side 28 is below the model's 24x32"),
])
def test_settings_that_do_not_fit_the_model_fail_its_load(fields, geometry, message):
    with pytest.raises(ValueError, match=message):
        settings(**fields).check(geometry)


def keras_preprocess_input(family: str):
    """``tf.keras.applications.<family>.preprocess_input``: pure functions,
    no weights, nothing downloaded."""
    return importlib.import_module(f"keras.applications.{family}").preprocess_input


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_matches_its_keras_family(preset):
    family = preset.removeprefix("keras_")
    rng = np.random.default_rng(1)
    photos = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in ((24, 32), (50, 41), (7, 90))]
    blobs = []
    for photo in photos:
        buffer = io.BytesIO()
        photo.save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    ours = decode_images(blobs, RGB, 10**6, 2**30, settings(preset=preset))
    # The same resized pixels, 0-255 in RGB order, as Keras takes them.
    pixels = decode_images(blobs, RGB, 10**6, 2**30, settings(range=[0, 255]))
    assert (pixels == np.round(pixels)).all()
    expected = keras_preprocess_input(family)(pixels.copy())
    assert np.abs(ours - expected).max() <= 1e-6  # float32 rounding of one multiply-add
