"""Payload logging on a cluster: real traffic on every protocol (native,
TF Serving REST and gRPC, V2 REST and gRPC) logged to a directory as TF
Serving ``PredictionLog``s, each answer carrying its request id; the log
read back; then a new version warmed up by those records
(``python -m deployments.payload_warmup``) loads and serves."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from ray import serve
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from deployments.codecs.prediction_log import read_tfrecords
from deployments.codecs.tfserving_protos import prediction_log_pb2
from harness.cluster import wait_app_running, wait_until
from tests.common import ROOT, SAMPLES
from tests.integration.conftest import deploy_config, with_test_app

APP = "payloadlog"
DIGITS = ROOT / "models" / "digits"
META = (("application", APP),)


@pytest.fixture(scope="module")
def logged(base_url: str, tmp_path_factory) -> Iterator[tuple[str, Path, Path]]:
    base = tmp_path_factory.mktemp("payload-model") / "digits"
    base.mkdir()
    shutil.copytree(DIGITS / "1", base / "1")
    log_dir = tmp_path_factory.mktemp("payload-log")
    config = with_test_app(APP, model_args={
        "path": str(base), "labels_path": str(DIGITS / "labels.txt"),
        "version_policy": {"latest": 1}, "poll_interval_s": 0.5})
    preprocessor = config["applications"][-1]["deployments"][0]
    preprocessor["user_config"] = {**preprocessor.get("user_config", {}), "payload_logging": {
        "digits": {"sample_rate": 1.0, "default": "full", "max_record_bytes": 2**24,
                   "sink": {"url": str(log_dir), "format": "prediction_log",
                            "rotate_s": 1}}}}
    deploy_config(config, tmp_path_factory.mktemp("payload-config"))
    wait_app_running(APP, 180)
    yield f"{base_url}/{APP}", base, log_dir
    serve.delete(APP, _blocking=False)  # (goes while the next module starts)


def test_every_protocol_logged_read_back_and_replayed_as_warmup(logged, grpc_address: str):
    url, base, log_dir = logged
    jpeg = SAMPLES[0].read_bytes()
    ids = {}
    with httpx.Client(base_url=url, timeout=60) as http:
        r = http.post("/predict", content=jpeg, headers={"content-type": "image/jpeg",
                                                           "x-request-id": "pl-native"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "pl-native"
        ids["native"] = "pl-native"
        r = http.post("/v1/models/digits:predict", json={
            "instances": [{"b64": base64.b64encode(jpeg).decode()}]})
        assert r.status_code == 200
        ids["tfserving"] = r.headers["x-request-id"]  # Serve's, echoed once
        assert len(r.headers.get_list("x-request-id")) == 1
        blob = len(jpeg).to_bytes(4, "little") + jpeg  # V2's binary BYTES element
        header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                         "parameters": {"binary_data_size": len(blob)}}]})
        r = http.post("/v2/models/digits/infer", content=header.encode() + blob, headers={
            "x-request-id": "pl-v2", "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header))})
        assert r.status_code == 200, r.text
        ids["v2"] = "pl-v2"
    with grpc.insecure_channel(grpc_address) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "digits"
        tensor = request.inputs["image"]
        tensor.dtype = 7  # DT_STRING
        tensor.tensor_shape.dim.add(size=1)
        tensor.string_val.append(jpeg)
        _, call = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict.with_call(
            request, metadata=(*META, ("x-request-id", "pl-tfgrpc")), timeout=60)
        assert dict(call.trailing_metadata())["x-request-id"] == "pl-tfgrpc"
        ids["tfserving-grpc"] = "pl-tfgrpc"
        infer = pb.ModelInferRequest(model_name="digits")
        infer.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
            jpeg)
        _, call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(
            infer, metadata=META, timeout=60)
        ids["v2-grpc"] = dict(call.trailing_metadata())["x-request-id"]

    def records() -> list[prediction_log_pb2.PredictionLog]:
        found = []
        for path in sorted(log_dir.rglob("*.tfrecord")):
            with contextlib.suppress(ValueError):  # a file being written
                found.extend(prediction_log_pb2.PredictionLog.FromString(r)
                             for r in read_tfrecords(io.BytesIO(path.read_bytes())))
        return found

    wait_until(lambda: len(records()) >= 5, 30, "five records in the log")
    logs = records()
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == "digits" and request.model_spec.version.value == 1
        image = request.inputs[next(iter(request.inputs))]
        assert image.tensor_content and image.tensor_shape.dim[0].size == 1
        assert log.predict_log.response.outputs

    subprocess.run([sys.executable, "-m", "deployments.payload_warmup", str(log_dir),
                    str(base / ".staging-2"), "-n", "5", "--model", "digits"],
                   check=True, cwd=ROOT)
    warmup = base / ".staging-2" / "assets.extra" / "tf_serving_warmup_requests"
    assert len(list(read_tfrecords(io.BytesIO(warmup.read_bytes())))) == 5
    staged = base.parent / "staging-2"
    shutil.copytree(DIGITS / "1", staged)
    shutil.copytree(base / ".staging-2" / "assets.extra", staged / "assets.extra",
                    dirs_exist_ok=True)
    staged.rename(base / "2")

    def answered_by_2() -> bool:
        r = httpx.post(f"{url}/predict", content=jpeg, timeout=60,
                       headers={"content-type": "image/jpeg"})
        return r.status_code == 200 and r.json().get("version") == 2

    wait_until(answered_by_2, 120, "version 2, warmed up by the logged records, serving")
    status = httpx.get(f"{url}/v1/models/digits/versions/2", timeout=30).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    assert set(ids) == {"native", "tfserving", "v2", "tfserving-grpc", "v2-grpc"}
