"""What every test tier shares: the repository's paths, the shipped config and
the sample digits (``digit_<label>_<size>_<mode>.<ext>``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "config.yaml"
SAMPLES = sorted((ROOT / "models" / "samples").iterdir())
# The models with other signatures (models/build_test_models.py; `make model`).
TEST_MODELS = ROOT / "models" / "test"
APP_NAME = "ray-tf-serve"  # as named in configs/config.yaml
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg"}


def sample_label(path: Path) -> str:
    return path.name.split("_")[1]


def top_label(prediction: dict) -> str:
    """The best class of one native prediction."""
    return prediction["top_k"][0]["label"]


def signature_models() -> Path:
    """models/test, built first if `make model` has not (a few seconds)."""
    if not (TEST_MODELS / ".built").exists():
        subprocess.run([sys.executable, "-m", "models.build_test_models"], cwd=ROOT, check=True)
        (TEST_MODELS / ".built").touch()
    return TEST_MODELS


# The pipeline example: the locator (models/build_locator.py) before the digits.
READER_CONFIG = ROOT / "examples" / "digit_reader" / "config.yaml"
LOCATOR = ROOT / "models" / "locator"


def locator_model() -> Path:
    """models/locator, built first if `make model` has not (some 20 s)."""
    if not (LOCATOR / "1" / "saved_model.pb").exists():
        subprocess.run([sys.executable, "-m", "models.build_locator"], cwd=ROOT, check=True)
    return LOCATOR


def reader_args() -> dict:
    """The example's app ``args``, model paths made absolute."""
    import yaml

    (app,) = yaml.safe_load(READER_CONFIG.read_text())["applications"]
    args = app["args"]
    for model in args["models"]:
        for key in ("path", "labels_path"):
            if key in model:
                model[key] = str(ROOT / model[key])
    return args


def read_in_process(canvases: np.ndarray) -> dict[str, np.ndarray]:
    """The example pipeline's stages called one after the other in this
    process: the reference every protocol's answer is compared with."""
    from deployments.config import AppArgs
    from deployments.runner import SavedModelRunner
    from examples.digit_reader.crop import crop_digits

    locator, digits = (m.resolved() for m in AppArgs.model_validate(reader_args()).models)
    box = SavedModelRunner(locator, 1, Path(locator.path) / "1", "/CPU:0").run(
        {"image": canvases})["box"]
    crops = crop_digits({"image": canvases, "box": box})
    scores = SavedModelRunner(digits, 1, Path(digits.path) / "1", "/CPU:0").run(crops)
    return {"box": box, "probabilities": scores["probabilities"]}
