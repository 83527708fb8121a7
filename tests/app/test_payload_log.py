"""Payload logging in process: every protocol's answer carries its request
id (the caller's, else a new one), logged or not; a logged request's record
lands in the model's directory with that id, its protocol, its version and
signature; the force header logs a request at rate 0; a failed request is
logged with its status and error; the model's settings change live."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits
from starlette.testclient import TestClient
from tensorflow_serving.apis import predict_pb2
from tritonclient.grpc import service_pb2 as pb

from deployments.config import PayloadLogArgs
from deployments.ingress.asgi import build_asgi
from deployments.ingress.auth import Gate
from deployments.ingress.dataplane import DataPlane
from deployments.ingress.protocols.tfserving_grpc import TFServingGrpcService
from deployments.ingress.protocols.v2_grpc import V2GrpcService
from deployments.metrics import IngressMetrics
from harness.inprocess import in_process_plane
from tests.app.conftest import config_args
from tests.app.test_tfserving_grpc import Context
from tests.common import SAMPLES

ROW = load_digits().data[:1].astype(np.float32)


class Service(V2GrpcService, TFServingGrpcService):
    def __init__(self, plane: DataPlane, gate: Gate, metrics: IngressMetrics) -> None:
        self._plane, self._limits, self._gate, self._metrics = plane, plane._limits, gate, metrics


class App:
    def __init__(self, http: TestClient, service: Service, plane: DataPlane, log: Path) -> None:
        self.http, self.service, self.plane, self.log = http, service, plane, log

    def rpc(self, method: str, request: Any, *metadata: tuple[str, str]) -> Context:
        context = Context(metadata=metadata)
        self.http.portal.call(getattr(self.service, method), request, context)
        return context

    def configure(self, **models: dict[str, Any]) -> None:
        self.plane.payload_log.configure({
            name: PayloadLogArgs.model_validate({"sink": {"url": str(self.log)}, **s})
            for name, s in models.items()})

    def records(self, model: str) -> list[dict[str, Any]]:
        """Every record the model's log holds so far (its queue flushed first)."""
        log = self.plane.payload_log.log(model)
        assert log is not None and log.flush()
        log.sink.close()  # the next write opens a new file
        return [json.loads(line)["data"] for f in sorted((self.log / model).glob("*.jsonl"))
                for line in f.read_text().splitlines()]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    args = config_args()
    metrics = IngressMetrics([m.name for m in args.models])
    plane = in_process_plane(args, metrics)
    gate = Gate(args.auth)
    with TestClient(build_asgi(plane, args.limits, metrics, args.top_k, gate)) as http:
        yield App(http, Service(plane, gate, metrics), plane,
                  tmp_path_factory.mktemp("payloads"))
    plane.payload_log.close()


def tfserving_predict() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits_linear"
    tensor = request.inputs["pixels"]
    tensor.dtype = 1  # DT_FLOAT
    tensor.tensor_shape.dim.add(size=1)
    tensor.tensor_shape.dim.add(size=64)
    tensor.float_val.extend(ROW.reshape(-1).tolist())
    return request


def v2_infer() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits_linear")
    tensor = request.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend(ROW.reshape(-1).tolist())
    return request


def calls(app: App, rid: str | None) -> dict[str, str]:
    """One digits_linear request on each protocol with ``rid`` as the caller's
    id (None: none given): the id each answer carries, by protocol."""
    headers = {"x-request-id": f"{rid}-rest"} if rid else {}
    meta = (lambda p: (("x-request-id", f"{rid}-{p}"),)) if rid else (lambda p: ())
    got = {}
    r = app.http.post("/v1/models/digits_linear:predict", json={"instances": ROW.tolist()},
                      headers={k: v.replace("-rest", "-tfserving") for k, v in headers.items()})
    assert r.status_code == 200
    got["tfserving"] = r.headers["x-request-id"]
    r = app.http.post("/v2/models/digits_linear/infer", headers={
        k: v.replace("-rest", "-v2") for k, v in headers.items()}, json={"inputs": [
            {"name": "pixels", "datatype": "FP32", "shape": [1, 64],
             "data": ROW.reshape(-1).tolist()}]})
    assert r.status_code == 200
    got["v2"] = r.headers["x-request-id"]
    r = app.http.post("/models/digits_linear/predict", json={"instances": ROW.tolist()},
                      headers={k: v.replace("-rest", "-native") for k, v in headers.items()})
    assert r.status_code == 200, r.text
    got["native"] = r.headers["x-request-id"]
    got["tfserving-grpc"] = dict(app.rpc("Predict", tfserving_predict(),
                                         *meta("tfserving-grpc")).trailing)["x-request-id"]
    got["v2-grpc"] = dict(app.rpc("ModelInfer", v2_infer(),
                                  *meta("v2-grpc")).trailing)["x-request-id"]
    return got


def test_every_protocol_returns_the_callers_request_id_unlogged(app: App):
    app.configure()
    got = calls(app, "abc")
    assert got == {p: f"abc-{p}" for p in got}
    fresh = calls(app, None)
    assert len(set(fresh.values())) == 5 and all(len(v) == 36 for v in fresh.values())


def test_a_logged_request_lands_in_the_directory_with_its_id(app: App):
    app.configure(digits_linear={"sample_rate": 1.0})
    got = calls(app, "log1")
    records = {r["id"]: r for r in app.records("digits_linear")}
    assert set(got.values()) <= set(records)
    for protocol, rid in got.items():
        record = records[rid]
        assert record["protocol"] == protocol
        assert record["model_name"] == "digits_linear" and record["model_version"] == "1"
        assert record["signature_name"] == "serving_default" and record["status"] == 200
        assert record["latency_ms"] > 0
        (pixels,) = record["inputs"]
        assert pixels == {"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                          "parameters": {"kept": "shape"}}  # shapes only, by default
        assert record["outputs"] and all("data" not in t for t in record["outputs"])


def test_the_force_header_logs_a_request_at_rate_zero(app: App):
    app.configure(digits_linear={"sample_rate": 0.0, "inputs": {"pixels": "full"}})
    app.http.post("/v1/models/digits_linear:predict", json={"instances": ROW.tolist()},
                  headers={"x-request-id": "not-forced"})
    app.http.post("/v1/models/digits_linear:predict", json={"instances": ROW.tolist()},
                  headers={"x-request-id": "forced", "x-log-payload": "1"})
    app.rpc("Predict", tfserving_predict(), ("x-request-id", "forced-grpc"),
            ("x-log-payload", "true"))
    records = {r["id"]: r for r in app.records("digits_linear")}
    assert "not-forced" not in records and records["forced"]["forced"]
    np.testing.assert_allclose(records["forced"]["inputs"][0]["data"], ROW.reshape(-1))
    assert "forced-grpc" in records


def test_a_failed_request_is_logged_with_its_status_and_error(app: App):
    app.configure(digits_linear={"sample_rate": 1.0})
    r = app.http.post("/v2/models/digits_linear/infer", headers={"x-request-id": "bad"},
                      json={"inputs": [{"name": "pixels", "datatype": "FP32",
                                        "shape": [1, 63], "data": [0] * 63}]})
    assert r.status_code == 400 and r.headers["x-request-id"] == "bad"
    records = {r["id"]: r for r in app.records("digits_linear")}
    assert records["bad"]["status"] == 400 and "63" in records["bad"]["error"]


def test_images_are_logged_once_decoded_as_the_model_takes_them(app: App):
    app.configure(digits={"sample_rate": 1.0})
    r = app.http.post("/predict", content=SAMPLES[0].read_bytes(),
                      headers={"content-type": "image/jpeg", "x-request-id": "img"})
    assert r.status_code == 200, r.text
    (record,) = [r for r in app.records("digits") if r["id"] == "img"]
    (image,) = record["inputs"]
    assert image["datatype"] == "FP32" and image["shape"][0] == 1 and len(image["shape"]) == 4
    assert record["protocol"] == "native"

