"""The native /predict route in each body format, its errors and limits."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.testclient import TestClient

from deployments.codecs.image import decode_images
from deployments.types import ImageGeometry
from tests.app.conftest import build_app, config_args
from tests.common import MEDIA_TYPES, SAMPLES, sample_label, top_label


def test_health_and_readiness(client: httpx.Client):
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json() == {"status": "ready",
                                            "models": ["digits", "digits_linear"]}


def test_raw_image_bodies(client: httpx.Client):
    correct = 0
    for path in SAMPLES:
        r = client.post("/predict", content=path.read_bytes(),
                        headers={"Content-Type": MEDIA_TYPES[path.suffix]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "digits" and len(body["predictions"]) == 1
        correct += top_label(body["predictions"][0]) == sample_label(path)
    assert correct >= 9


def test_multipart_one_prediction_per_file_in_order(client: httpx.Client):
    files = [("files", (p.name, p.read_bytes(), MEDIA_TYPES[p.suffix])) for p in SAMPLES]
    r = client.post("/predict", files=files)
    assert r.status_code == 200, r.text
    labels = [top_label(p) for p in r.json()["predictions"]]
    expected = [sample_label(p) for p in SAMPLES]
    assert len(labels) == len(expected)
    assert sum(a == b for a, b in zip(labels, expected, strict=True)) >= 9


def test_json_instances_match_image_uploads(client: httpx.Client):
    batch = decode_images([p.read_bytes() for p in SAMPLES], ImageGeometry(28, 28, 1), 10**8, 2**30)
    r = client.post("/predict", json={"instances": batch.tolist()})
    assert r.status_code == 200, r.text
    labels = [top_label(p) for p in r.json()["predictions"]]
    assert sum(a == sample_label(p) for a, p in zip(labels, SAMPLES, strict=True)) >= 9


def test_top_k_and_full_scores(client: httpx.Client):
    r = client.post("/predict?top_k=4&scores=true", content=SAMPLES[0].read_bytes(),
                    headers={"Content-Type": "image/png"})
    (prediction,) = r.json()["predictions"]
    probabilities = [c["probability"] for c in prediction["top_k"]]
    assert len(probabilities) == 4 and probabilities == sorted(probabilities, reverse=True)
    assert len(prediction["scores"]) == 10
    assert sum(prediction["scores"]) == pytest.approx(1.0, abs=1e-4)
    default = client.post("/predict", content=SAMPLES[0].read_bytes(),
                          headers={"Content-Type": "image/png"}).json()
    assert len(default["predictions"][0]["top_k"]) == 3  # top_k: 3 in configs/config.yaml


def many_files(n: int) -> bytes:
    part = (b"--x\r\nContent-Disposition: form-data; name=f; filename=a.png\r\n"
            b"Content-Type: image/png\r\n\r\n" + SAMPLES[0].read_bytes() + b"\r\n")
    return part * n + b"--x--\r\n"


PNG = {"Content-Type": "image/png"}
JSON = {"Content-Type": "application/json"}
BAD_REQUESTS = [
    # (name, content, headers, path, status, words the error must contain)
    ("unsupported media type", b"hello", {"Content-Type": "text/plain"}, "/predict", 415,
     "unsupported Content-Type 'text/plain'"),
    ("no content type", b"hello", {}, "/predict", 415, "unsupported Content-Type"),
    ("undecodable image", b"GIF89a-not-really", PNG, "/predict", 400, "cannot decode image"),
    ("empty image body", b"", PNG, "/predict", 400, "empty image"),
    ("empty json body", b"", JSON, "/predict", 400, "empty request body"),
    ("malformed json", b'{"instances": [', JSON, "/predict", 400, "malformed JSON"),
    ("wrong shape", json.dumps({"instances": [[1.0, 2.0]]}).encode(), JSON, "/predict", 400,
     "expected float32[N, 28, 28, 1]"),
    ("wrong dtype", json.dumps({"instances": [[[["x"]] * 28] * 28]}).encode(), JSON, "/predict",
     400, "only numbers"),
    ("not instances", b'{"inputs": 1}', JSON, "/predict", 400, '"instances"'),
    ("bad top_k", SAMPLES[0].read_bytes(), PNG, "/predict?top_k=99", 400,
     "top_k must be between 1 and 10"),
    ("empty multipart", b"--x--\r\n", {"Content-Type": "multipart/form-data; boundary=x"},
     "/predict", 400, "no images"),
    ("body over the limit", b"\0" * (16 * 2**20 + 1), PNG, "/predict", 413,
     "the limit is 16777216"),
    ("NaN in JSON", b'{"instances": [NaN]}', JSON, "/predict", 400, "NaN is not a number"),
    ("too many files", many_files(257), {"Content-Type": "multipart/form-data; boundary=x"},
     "/predict", 413, "more than 256 files"),
    ("corrupt BMP header", b"BM" + b"\0" * 12 + b"\x63" + b"\0" * 60, PNG, "/predict", 400,
     "cannot decode image"),
]


@pytest.mark.parametrize(
    ("content", "headers", "path", "status", "words"),
    [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_input_gets_a_clear_4xx(client: httpx.Client, content, headers, path, status, words):
    r = client.post(path, content=content, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert words in r.json()["error"]


def test_app_still_serves_after_bad_input(client: httpx.Client):
    for _, content, headers, path, _, _ in BAD_REQUESTS[:4]:
        client.post(path, content=content, headers=headers)
    r = client.post("/predict", content=SAMPLES[3].read_bytes(), headers=PNG)
    assert r.status_code == 200
    assert top_label(r.json()["predictions"][0]) == sample_label(SAMPLES[3])


def test_unknown_route_is_404(client: httpx.Client):
    assert client.post("/nope").status_code == 404
    assert client.get("/predict").status_code == 405


def test_more_than_the_ingress_memory_budget_is_a_413_and_holds_nothing_after():
    budget = 2**20
    app = build_app(config_args(limits={"max_inflight_bytes": budget}))
    rows = json.dumps({"instances": [[0.5] * 64] * 256}).encode()  # ~0.5 MB of JSON
    image = SAMPLES[0].read_bytes()
    with TestClient(app, raise_server_exceptions=False) as client:
        shed = client.post("/models/digits_linear/predict", content=rows,
                           headers={"Content-Type": "application/json"})
        # More than the whole budget: never fits, so a 413 rather than a retry.
        assert shed.status_code == 413
        assert f"more than this server holds for all requests at once ({budget} bytes)" in \
            shed.json()["error"]
        for _ in range(3):  # what each request held was given back
            r = client.post("/predict", content=image, headers={"Content-Type": "image/png"})
            assert r.status_code == 200
