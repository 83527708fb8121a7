"""Python callers: a second Ray driver uses the app handle, like any Ray job."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
import ray
from ray import serve

from deployments.errors import BadRequest
from tests.common import APP_NAME, ROOT, SAMPLES


def test_handle_client_in_a_second_driver_matches_http(
    client: httpx.Client, subprocess_env: dict[str, str]
):
    files = [("f", (p.name, p.read_bytes(), "application/octet-stream")) for p in SAMPLES]
    over_http = client.post("/predict", files=files).json()

    done = subprocess.run(
        [sys.executable, "examples/handle_client.py", *map(str, SAMPLES)],
        cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])

    for answer in (answers["from_array"], answers["from_object_ref"], answers["forwarded"]):
        assert answer["model"] == over_http["model"]
        for mine, theirs in zip(answer["predictions"], over_http["predictions"], strict=True):
            assert [c["label"] for c in mine["top_k"]] == [c["label"] for c in theirs["top_k"]]
            for a, b in zip(mine["top_k"], theirs["top_k"], strict=True):
                assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_handle_errors_arrive_as_the_same_exception(base_url: str):
    app = serve.get_app_handle(APP_NAME)
    with pytest.raises(BadRequest, match=r"expected float32\[N, 28, 28, 1\]"):
        app.predict.remote(np.zeros((2, 5), np.float32)).result()
    # The app keeps serving handle callers after the error.
    ok = app.predict.remote(ray.put(np.zeros((1, 28, 28, 1), np.float32))).result()
    assert len(ok["predictions"]) == 1
