"""A model that cannot load fails its replica with a message naming the path and
the cause, shown in `serve status`; nothing hangs and the main app is unharmed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from ray import serve
from ray.serve.schema import ApplicationStatus

from deployments.app import build_app
from tests.integration.conftest import ROOT, SAMPLES


@pytest.mark.parametrize(
    ("make_path", "cause"),
    [
        (lambda tmp: tmp / "does-not-exist", "no such directory"),
        (lambda tmp: tmp, "no saved_model.pb in it"),
    ],
    ids=["missing", "not-a-savedmodel"],
)
def test_unloadable_model_fails_clearly(
    base_url, client: httpx.Client, tmp_path: Path, make_path, cause
):
    path = make_path(tmp_path)
    app = build_app({"models": [{"name": "broken", "path": str(path)}]})
    with pytest.raises(RuntimeError):
        serve.run(app, name="broken", route_prefix="/broken")
    try:
        status = serve.status().applications["broken"]
        assert status.status == ApplicationStatus.DEPLOY_FAILED
        message = status.deployments["broken"].message
        assert str(path) in message and cause in message
    finally:
        serve.delete("broken")
    r = client.post("/predict", content=SAMPLES[0].read_bytes(),
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200


def test_labels_that_do_not_match_the_model_fail_clearly(base_url, tmp_path: Path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    app = build_app({"models": [{"name": "mislabelled", "path": str(ROOT / "models/digits"),
                                 "labels_path": str(labels)}]})
    with pytest.raises(RuntimeError):
        serve.run(app, name="mislabelled", route_prefix="/mislabelled")
    try:
        message = serve.status().applications["mislabelled"].deployments["mislabelled"].message
        assert "has 2 labels but the model outputs 10 scores" in message
    finally:
        serve.delete("mislabelled")
