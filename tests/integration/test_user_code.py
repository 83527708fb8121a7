"""A model's own preprocess code shipped the way Serve apps get code (the
Preprocessor's ``runtime_env.py_modules``), and a broken import path failing
the deploy with a message in ``serve status``. (What the code does to each
protocol, and its errors, is tested in process: tests/app/test_user_code.py.)"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
from ray import serve
from sklearn.datasets import load_digits

from deployments.app import build_app
from harness.cluster import wait_app_running
from tests.common import ROOT
from tests.integration.conftest import deploy_config, with_test_app

APP = "usercode"
# Linear digits under the first model's name (its deployment settings apply).
LINEAR = {"path": "models/digits_linear", "labels_path": "models/digits_linear/labels.txt",
          "input": "tensor"}


def shipped_code(tmp_path: Path) -> Path:
    """A directory holding a user's package, as ``py_modules`` ships it."""
    package = tmp_path / "code" / "shipped_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "pre.py").write_text(
        "def to_counts(inputs):\n"
        "    return {name: array * 16 for name, array in inputs.items()}\n")
    return package.parent


def test_preprocess_code_shipped_by_py_modules(base_url: str, client: httpx.Client,
                                               tmp_path: Path):
    config = with_test_app(APP, model_args={**LINEAR, "preprocess": "shipped_pkg.pre:to_counts"},
                           deployment={"ray_actor_options": {"num_cpus": 0.25}})
    preprocessor = config["applications"][-1]["deployments"][0]
    preprocessor["ray_actor_options"]["runtime_env"]["py_modules"] = [
        f"local://{shipped_code(tmp_path)}"]
    deploy_config(config, tmp_path)
    try:
        wait_app_running(APP, 180)
        counts = load_digits().data[:4].astype(np.float32)
        plain = client.post("/v1/models/digits_linear:predict",
                            json={"instances": counts.tolist()})
        scaled = client.post(f"/{APP}/v1/models/digits:predict",
                             json={"instances": (counts / 16).tolist()})
        assert scaled.status_code == 200, scaled.text
        expected = np.array(plain.json()["predictions"])
        assert np.allclose(scaled.json()["predictions"], expected, atol=1e-6)
        # A handle caller's own object is read for the code, not forwarded.
        answer = serve.get_app_handle(APP).predict.remote(
            {"pixels": ray.put(counts / 16)}, scores=True).result()
        scores = [p["scores"] for p in answer["predictions"]]
        assert np.allclose(scores, expected, atol=1e-4)
    finally:
        serve.delete(APP, _blocking=False)  # (goes while the next test runs)


def test_a_broken_import_path_fails_the_deploy(base_url: str):
    app = build_app({"models": [{"name": "badcode", "path": str(ROOT / LINEAR["path"]),
                                 "postprocess": "missing_pkg.post:calibrate"}]})
    with pytest.raises(RuntimeError):
        serve.run(app, name="badcode", route_prefix="/badcode")
    try:
        message = serve.status().applications["badcode"].deployments["Preprocessor"].message
        assert ("model 'badcode': postprocess 'missing_pkg.post:calibrate' cannot be loaded: "
                "cannot import module 'missing_pkg.post': ModuleNotFoundError") in message
    finally:
        serve.delete("badcode", _blocking=False)  # (goes while the next test runs)
