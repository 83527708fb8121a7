"""The example pipeline (examples/digit_reader: locator → crop → digits) for
the tests and the bench: its application as the config has it, model paths
made absolute; the locator built if `make model` has not; its two stages
loaded in this process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from harness.tools import tools_env

if TYPE_CHECKING:
    from deployments.replica.runner import SavedModelRunner

ROOT = Path(__file__).resolve().parents[1]
READER_CONFIG = ROOT / "examples" / "digit_reader" / "config.yaml"
LOCATOR = ROOT / "models" / "locator"


def locator_model() -> Path:
    """models/locator, built first if `make model` has not (some 20 s)."""
    if not (LOCATOR / "1" / "saved_model.pb").exists():
        subprocess.run([sys.executable, "-m", "models.build_locator"], cwd=ROOT, check=True,
                       env=tools_env())
    return LOCATOR


def reader_app() -> dict:
    """The example's application, its model paths made absolute."""
    (app,) = yaml.safe_load(READER_CONFIG.read_text())["applications"]
    for model in app["args"]["models"]:
        for key in ("path", "labels_path"):
            if key in model:
                model[key] = str(ROOT / model[key])
    return app


def reader_stages() -> tuple[SavedModelRunner, SavedModelRunner]:
    """The locator and the digits model, version 1 of each, on this process's CPU."""
    from deployments.config import AppArgs
    from deployments.replica.runner import SavedModelRunner

    locator_model()
    models = AppArgs.model_validate(reader_app()["args"]).models
    return tuple(SavedModelRunner(m, 1, Path(m.path) / "1", "/CPU:0") for m in models)
