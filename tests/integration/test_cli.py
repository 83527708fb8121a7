"""``ray-tf-serve`` (``python -m deployments.cli``) end to end, with TF
Serving's own test models and its ``--model_config_file``,
``--monitoring_config_file`` and ``--batching_parameters_file``: labels from
the file answer on REST, TF Serving's gRPC stub answers on ``--port``, the
monitoring page shows TF Serving's metric names; a model added to and one
removed from the file, and a label, apply live within two poll periods while
another client keeps calling an unchanged model (no failure); TF Serving's
``HandleReloadConfigRequest`` adds, refuses and removes models, and
``grpc.health.v1`` answers a probe; SIGTERM
drains within the stop's budget (exit 0) and leaves no process and no port.
About 3 minutes.

It runs a Ray cluster of its own (the CLI starts one on 127.0.0.1), on free
ports, beside the session's cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc as grpc_lib
import httpx
import pytest
import tensorflow as tf
from google.protobuf import text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from deployments import run
from harness.cluster import free_port, replica_ports, wait_until
from tests.common import ROOT, TFSERVING_TESTDATA

pytestmark = pytest.mark.skipif(not TFSERVING_TESTDATA.is_dir(),
                                reason="TF Serving's test data (../shared) is not here")


def _config(*models: tuple[str, str, str]) -> str:
    entries = "\n".join(f'  config {{ name: "{name}" base_path: "{TFSERVING_TESTDATA / path}" '
                        f'model_platform: "tensorflow" {extra} }}' for name, path, extra in models)
    return f"model_config_list {{\n{entries}\n}}\n"


TWO = ("half_plus_two", "saved_model_half_plus_two_2_versions",
       "model_version_policy { all {} } version_labels { key: 'stable' value: 123 } "
       "version_labels { key: 'canary' value: 124 }")
THREE = ("half_plus_three", "saved_model_half_plus_three", "")
TF2 = ("half_plus_two_tf2", "saved_model_half_plus_two_tf2_cpu", "")


def _predict(client: httpx.Client, path: str) -> httpx.Response:
    return client.post(f"/v1/models/{path}:predict", json={"instances": [2.0]})


def _answers(client: httpx.Client, path: str) -> bool:
    try:
        return _predict(client, path).status_code == 200
    except httpx.HTTPError:
        return False


POLL_S = 20  # --model_config_file_poll_wait_seconds


@contextmanager
def _server(tmp_path: Path, *flags: str) -> Iterator[tuple[int, int]]:
    """``ray-tf-serve`` with ``flags`` on free ports (HTTP, gRPC); on leaving,
    SIGTERM, which drains within the stop's budget (exit 0) and leaves no
    process and no port."""
    http, grpc = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), run.RUNS: str(tmp_path / "runs"),
           "RAY_ADDRESS": "", **replica_ports()}
    env.pop("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", None)  # the CLI's own
    for name in ("RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT",
                 "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"):
        env[name] = str(free_port())
    server = subprocess.Popen(
        [sys.executable, "-m", "deployments.cli", f"--port={grpc}", f"--rest_api_port={http}",
         *flags], cwd=ROOT, env=env)
    try:
        yield http, grpc
    finally:
        server.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:  # Serve drained within the stop's budget: nothing had to be killed
            assert server.wait(timeout=90) == 0
            print(f"SIGTERM: exited 0 after {time.monotonic() - signalled:.1f} s")
        finally:
            server.kill()
    left = [p for p in run.processes() if p.mark and Path(p.mark).parent == tmp_path / "runs"]
    assert left == []
    assert run.port_is_free(http) and run.port_is_free(grpc)


def test_reload_and_stop(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text(_config(TWO, THREE))
    with _server(tmp_path, f"--model_config_file={config}",
                 f"--model_config_file_poll_wait_seconds={POLL_S}",
                 f"--monitoring_config_file={TFSERVING_TESTDATA / 'monitoring_config.txt'}",
                 "--enable_batching",
                 f"--batching_parameters_file={TFSERVING_TESTDATA / 'batching_config.txt'}",
                 ) as (http, grpc):
        _reload_while_serving(config, http, grpc)


def _reload_while_serving(config: Path, http: int, grpc: int) -> None:
    stop = threading.Event()
    answers: list[int] = []
    failures: list[str] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{http}", timeout=30) as client:
            def ok(path: str) -> bool:
                return _answers(client, path)

            wait_until(lambda: ok("half_plus_three") and ok("half_plus_two"), 240,
                       "the models to serve")
            # Labels from the file, on REST.
            canary = client.get("/v1/models/half_plus_two/labels/canary").json()
            assert canary["model_version_status"][0]["version"] == "124", canary
            assert _predict(client, "half_plus_two/labels/stable").json() == {
                "predictions": [3.0]}
            # TF Serving's own gRPC stub on --port, as its server test calls it.
            with grpc_lib.insecure_channel(f"127.0.0.1:{grpc}") as channel:
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "half_plus_three"
                request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], shape=[1]))
                request.output_filter.append("y")
                answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                    request, timeout=60)
            assert list(answer.outputs["y"].float_val) == [4.0]
            assert answer.model_spec.version.value == 123
            # The monitoring file's page, with TF Serving's names (the requests above).
            wait_until(lambda: ":tensorflow:serving:request_count{" in client.get(
                "/monitoring/prometheus/metrics").text, 60, "TF Serving's request_count")

            def load() -> None:
                with httpx.Client(base_url=f"http://127.0.0.1:{http}", timeout=30) as c:
                    while not stop.is_set():
                        try:
                            r = _predict(c, "half_plus_three")
                            if r.status_code == 200 and r.json() == {"predictions": [4.0]}:
                                answers.append(1)
                            else:
                                failures.append(f"{r.status_code} {r.text[:200]}")
                        except httpx.HTTPError as e:
                            failures.append(repr(e))

            loader = threading.Thread(target=load)
            loader.start()
            time.sleep(2)
            # half_plus_two goes, tf2 comes, half_plus_three's label is new.
            config.write_text(_config(
                (*THREE[:2], "version_labels { key: 'stable' value: 123 }"), TF2))
            written = time.monotonic()

            def left_s() -> float:  # of two poll periods from the write
                return max(0.0, written + 2 * POLL_S - time.monotonic())

            wait_until(lambda: _predict(client, "half_plus_two").status_code == 404,
                       left_s(), "the removed model to go within two poll periods")
            gone_s = time.monotonic() - written
            wait_until(lambda: ok("half_plus_two_tf2"), left_s(),
                       "the added model to answer within two poll periods")
            added_s = time.monotonic() - written
            stable = client.get("/v1/models/half_plus_three/labels/stable").json()
            assert stable["model_version_status"][0]["version"] == "123", stable
            print(f"reload: removed model gone after {gone_s:.1f} s, added model answered "
                  f"after {added_s:.1f} s (poll period {POLL_S} s)")
            time.sleep(2)
            stop.set()
            loader.join()
            assert _predict(client, "half_plus_two_tf2").json() == {"predictions": [3.0]}
            assert failures == [], failures[:5]
            assert len(answers) > 20
    finally:
        stop.set()


def _reload_request(*models: tuple[str, str, str]) -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest(metric_names=["load_attempts"])
    text_format.Parse(_config(*models), request.config)
    return request


def test_tf_servings_reload_rpc_changes_the_models(tmp_path: Path) -> None:
    """``ModelService.HandleReloadConfigRequest`` from TF Serving's own stub,
    as its users' scripts send it: answered once the added model serves."""
    config = tmp_path / "models.config"
    config.write_text(_config(THREE))
    with _server(tmp_path, f"--model_config_file={config}",
                 "--enable_grpc_healthcheck_service") as (http, grpc), \
            httpx.Client(base_url=f"http://127.0.0.1:{http}", timeout=30) as client, \
            grpc_lib.insecure_channel(f"127.0.0.1:{grpc}") as channel:
        wait_until(lambda: _answers(client, "half_plus_three"), 240, "the model to serve")
        # What a Kubernetes gRPC probe asks, on --port, with no metadata.
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="PredictionService"), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reload = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest

        answer = reload(_reload_request(THREE, TF2), timeout=240)
        assert answer.status.error_code == 0 and answer.HasField("status")
        assert [(m.name, m.int64_value_increase) for m in answer.metric] == [
            ("load_attempts", 0)]
        assert _predict(client, "half_plus_two_tf2").json() == {"predictions": [3.0]}

        with pytest.raises(grpc_lib.RpcError) as refused:
            reload(_reload_request(THREE, THREE), timeout=60)
        assert refused.value.code() == grpc_lib.StatusCode.INVALID_ARGUMENT
        assert "the name 'half_plus_three' is used twice" in refused.value.details()

        missing = ("missing", "no_such_model", "")
        with pytest.raises(grpc_lib.RpcError) as failed:
            reload(_reload_request(THREE, missing), timeout=240)
        assert failed.value.code() == grpc_lib.StatusCode.UNKNOWN
        assert "1 model(s) did not become available: {missing}" in failed.value.details()
        assert _predict(client, "half_plus_three").json() == {"predictions": [4.0]}
        assert _predict(client, "missing").status_code == 404

        reload(_reload_request(TF2), timeout=240)
        assert _predict(client, "half_plus_three").status_code == 404
        assert _predict(client, "half_plus_two_tf2").json() == {"predictions": [3.0]}
