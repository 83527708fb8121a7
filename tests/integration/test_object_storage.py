"""A model read from S3 (moto's S3-compatible server, run locally): the model
replicas list and fetch its versions and labels themselves, and serve a new
version uploaded to the bucket while they run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from ray import serve

from harness.cluster import free_port, wait_app_running, wait_until
from tests.common import ROOT, SAMPLES
from tests.integration.conftest import deploy_config, with_test_app

APP = "from-s3"
BUCKET = "models"
DIGITS = ROOT / "models" / "digits"


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """The server, a bucket, and the environment a client needs to reach it."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    client(env).create_bucket(Bucket=BUCKET)
    yield env
    server.stop()


def client(env: dict[str, str]):
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def upload(env: dict[str, str], source: Path, prefix: str) -> None:
    """Every file, ``saved_model.pb`` last (as docs/configuration.md advises)."""
    s3 = client(env)
    files = sorted((p for p in source.rglob("*") if p.is_file()),
                   key=lambda p: (p.name == "saved_model.pb", str(p)))
    for path in files:
        s3.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(source)}")


@pytest.fixture(scope="module")
def s3_url(base_url: str, s3: dict[str, str], tmp_path_factory) -> Iterator[str]:
    upload(s3, DIGITS / "1", "digits/1")
    client(s3).upload_file(str(DIGITS / "labels.txt"), BUCKET, "digits/labels.txt")
    config = with_test_app(APP, model_args={
        "path": f"s3://{BUCKET}/digits", "labels_path": f"s3://{BUCKET}/digits/labels.txt",
        "poll_interval_s": 0.5},
        deployment={"ray_actor_options": {"num_cpus": 1, "runtime_env": {"env_vars": s3}}})
    deploy_config(config, tmp_path_factory.mktemp("s3-config"))
    wait_app_running(APP, 180)
    yield f"{base_url}/{APP}"
    serve.delete(APP, _blocking=False)  # (goes while the next module starts)


def predict(url: str) -> dict:
    image = {"content": SAMPLES[3].read_bytes(), "headers": {"Content-Type": "image/png"}}
    response = httpx.post(f"{url}/predict", **image, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_model_in_s3_is_served_and_new_versions_in_the_bucket_go_live(
        s3_url: str, s3: dict[str, str], base_url: str):
    answer = predict(s3_url)
    assert answer["version"] == 1
    assert answer["predictions"] == predict(base_url)["predictions"]  # the same weights
    stats = serve.get_deployment_handle("digits", APP).stats.remote().result()
    assert Path(stats["path"]).is_dir()  # a local copy, in the node's cache
    upload(s3, DIGITS / "1", "digits/2")
    wait_until(lambda: predict(s3_url)["version"] == 2, 60, "version 2 from the bucket")
