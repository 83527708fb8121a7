"""What every test tier shares: the repository's paths, the shipped config and
the sample digits (``digit_<label>_<size>_<mode>.<ext>``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "config.yaml"
SAMPLES = sorted((ROOT / "models" / "samples").iterdir())
# The models with other signatures (models/build_test_models.py; `make model`).
TEST_MODELS = ROOT / "models" / "test"
APP_NAME = "ray-tf-serve"  # as named in configs/config.yaml
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg"}
# TF Serving's own test models and golden answers, beside the project (../shared).
TFSERVING_TESTDATA = ROOT.parent / "shared" / "tfserving-testdata"
# One TLS context for the clients the load loops make per request: httpx builds
# one per client otherwise, loading the CA bundle (26 ms of CPU each, thousands
# of them per run). Verification stays on; the servers here speak plain HTTP.
TLS = httpx.create_ssl_context()


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



def read_in_process(canvases: np.ndarray) -> dict[str, np.ndarray]:
    """The example pipeline's stages called one after the other in this
    process: the reference every protocol's answer is compared with."""
    from examples.digit_reader.crop import crop_digits
    from harness.reader import reader_stages

    locate, read = reader_stages()
    box = locate.run({"image": canvases})["box"]
    scores = read.run(crop_digits({"image": canvases, "box": box}))
    return {"box": box, "probabilities": scores["probabilities"]}
