"""A model configured with a preprocessing preset, end to end in process: what
it answers on each protocol equals the SavedModel called on the pixels the
preset's Keras function makes of the same resized image."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from starlette.testclient import TestClient

from deployments.preprocessing import ImagePreprocessing
from tests.app.conftest import build_app, config_args
from tests.common import ROOT, SAMPLES

PNGS = [p for p in SAMPLES if p.suffix == ".png"]  # no JPEG draft: plain resizes to compare
SETTINGS = {"preset": "keras_mobilenet_v2", "resize": {"shorter_side": 32},
            "interpolation": "bicubic"}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    args = config_args()
    digits = args.models[0].model_copy(
        update={"preprocessing": ImagePreprocessing.model_validate(SETTINGS)})
    with TestClient(build_app(args.model_copy(update={"models": (digits,)})),
                    base_url="http://app") as c:
        yield c


def expected_scores() -> np.ndarray:
    """Resize to 32 and take the centre 28x28 (by hand), apply Keras's own
    MobileNetV2 preprocess_input, call the SavedModel."""
    pixels = np.stack([
        np.asarray(Image.open(p).convert("L").resize((32, 32), Image.Resampling.BICUBIC)
                   .crop((2, 2, 30, 30)), np.float32)[..., None] for p in PNGS])
    inputs = keras.applications.mobilenet_v2.preprocess_input(pixels)
    model = tf.saved_model.load(str(ROOT / "models" / "digits" / "1"))
    (name,) = model.signatures["serving_default"].structured_input_signature[1]
    (scores,) = model.signatures["serving_default"](**{name: tf.constant(inputs)}).values()
    return scores.numpy()


def test_a_preset_model_answers_as_the_savedmodel_on_the_presets_pixels(client: TestClient):
    expected = expected_scores()
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in PNGS]
    native = client.post("/predict?scores=true", files=files)
    assert native.status_code == 200, native.text
    scores = [p["scores"] for p in native.json()["predictions"]]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    instances = [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in PNGS]
    tfserving = client.post("/v1/models/digits:predict", json={"instances": instances})
    assert tfserving.status_code == 200, tfserving.text
    np.testing.assert_allclose(tfserving.json()["predictions"], expected, atol=1e-5)


def test_the_settings_are_listed_with_the_model(client: TestClient):
    (model,) = client.get("/models").json()["models"]
    shown = model["preprocessing"]
    assert shown["preset"] == "keras_mobilenet_v2" and shown["range"] == [-1.0, 1.0]
    assert shown["resize"] == {"shorter_side": 32, "crop": "center"}
