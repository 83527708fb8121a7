"""What every test tier shares: the repository's paths, the shipped config and
the sample digits (``digit_<label>_<size>_<mode>.<ext>``)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "config.yaml"
SAMPLES = sorted((ROOT / "models" / "samples").iterdir())
APP_NAME = "ray-tf-serve"  # as named in configs/config.yaml
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg"}


def sample_label(path: Path) -> str:
    return path.name.split("_")[1]


def top_label(prediction: dict) -> str:
    """The best class of one native prediction."""
    return prediction["top_k"][0]["label"]
