"""Payload logging in process: the record builders and redaction, both
encoders (CloudEvents JSON, PredictionLog TFRecords read back by TensorFlow
and by our warm-up reader), the queue (never blocking, every record written
or counted), the directory sink's rotation, the S3 sink against moto's
standalone server, the HTTP sink against a real local receiver, and the
warm-up command."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import s3fs

from deployments.codecs import cloudevents, prediction_log
from deployments.codecs.payload import PayloadRecord, keep_tensors
from deployments.codecs.tfserving_protos import prediction_log_pb2
from deployments.config import PayloadLogArgs
from deployments.ingress.payload_log import ModelLog, PayloadLogs, SinkFailed
from deployments.metrics import PayloadLogMetrics
from deployments.payload_warmup import main as warmup_main
from tests.unit.test_storage import bucket, s3  # noqa: F401  (moto's server)

IMAGE = np.arange(2 * 4 * 4 * 1, dtype=np.float64).reshape(2, 4, 4, 1) / 10


def record(inputs: dict[str, Any] | None = None, keep: str = "full", rid: str = "r1",
           cap: int = 2**20, error: str | None = None, **outputs: np.ndarray
           ) -> PayloadRecord:
    ins, left = keep_tensors(inputs if inputs is not None else {"image": IMAGE}, {}, keep,  # type: ignore[arg-type]
                             cap, {"image": "float32"})
    outs, _ = keep_tensors(outputs or {"scores": np.array([[0.1, 0.9], [0.8, 0.2]],
                                                            np.float32)},
                           {}, keep, left)  # type: ignore[arg-type]
    return PayloadRecord(rid, 1_700_000_000.25, "digits", 3, "serving_default", "v2-rest",
                         ins, outs, 0.0125, 500 if error else 200, error)


# --- the record and what it keeps -----------------------------------------------------------


def test_by_default_only_shapes_and_dtypes_are_kept():
    kept, left = keep_tensors({"image": IMAGE, "name": np.array([b"alice"], object)}, {},
                              "shape", 100)
    assert [(t.name, t.dtype, t.shape, t.kept, t.values) for t in kept] == [
        ("image", "float64", (2, 4, 4, 1), "shape", None), ("name", "string", (1,), "shape", None)]
    assert left == 100
    assert '"alice"' not in cloudevents.json_line(record({"name": np.array([b"alice"], object)},
                                                         keep="shape"), "s").decode()


def test_per_tensor_full_shape_or_none():
    kept, _ = keep_tensors({"a": np.ones(2), "b": np.ones(3), "c": np.ones(4)},
                           {"a": "full", "c": "none"}, "shape", 1000)
    assert [(t.name, t.kept) for t in kept] == [("a", "full"), ("b", "shape")]
    np.testing.assert_array_equal(kept[0].values, np.ones(2))


def test_tensors_over_the_cap_are_summarised_not_written():
    kept, left = keep_tensors({"small": np.ones(4, np.float32), "big": IMAGE}, {}, "full", 100)
    small, big = kept
    assert small.kept == "full" and left == 100 - 16
    assert big.kept == "summary" and big.values is None and big.nbytes == IMAGE.nbytes
    assert big.summary == {"min": 0.0, "max": pytest.approx(3.1), "mean": pytest.approx(1.55)}
    event = cloudevents.structured_event(record({"big": IMAGE}, cap=100), "s")
    (tensor,) = event["data"]["inputs"]
    assert "data" not in tensor and tensor["parameters"]["kept"] == "summary"


def test_a_structured_cloudevent_holds_the_whole_record():
    event = json.loads(cloudevents.json_line(record(), "ray-tf-serve://h/digits"))
    assert {k: event[k] for k in ("specversion", "id", "source", "time", "datacontenttype")} == {
        "specversion": "1.0", "id": "r1", "source": "ray-tf-serve://h/digits",
        "time": "2023-11-14T22:13:20.250000Z", "datacontenttype": "application/json"}
    data = event["data"]
    assert (data["model_name"], data["model_version"], data["signature_name"],
            data["protocol"], data["status"], data["latency_ms"]) == (
        "digits", "3", "serving_default", "v2-rest", 200, 12.5)
    (image,) = data["inputs"]
    assert image["datatype"] == "FP32" and image["shape"] == [2, 4, 4, 1]
    np.testing.assert_allclose(image["data"], IMAGE.reshape(-1), rtol=1e-6)


def test_kserve_events_are_a_request_and_a_response_in_binary_mode():
    (req_h, req_b), (resp_h, resp_b) = cloudevents.kserve_events(
        record(error="model 'digits' failed"), "src", "prod")
    for headers in (req_h, resp_h):
        assert headers["ce-specversion"] == "1.0" and headers["ce-id"] == "r1"
        assert headers["ce-inferenceservicename"] == "digits"
        assert headers["ce-namespace"] == "prod" and headers["ce-component"] == "predictor"
    assert req_h["ce-type"] == "org.kubeflow.serving.inference.request"
    assert resp_h["ce-type"] == "org.kubeflow.serving.inference.response"
    assert json.loads(req_b)["inputs"][0]["name"] == "image"
    assert json.loads(resp_b) == {"error": "model 'digits' failed"}


# --- PredictionLog TFRecords ----------------------------------------------------------------


def test_tfrecord_framing_is_tensorflows(tmp_path: Path):
    import tensorflow as tf

    path = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(b"hello")
        writer.write(b"")
    assert path.read_bytes() == prediction_log.tfrecord(b"hello") + prediction_log.tfrecord(b"")
    assert list(prediction_log.read_tfrecords(io.BytesIO(path.read_bytes()))) == [b"hello", b""]


def test_prediction_logs_read_back_by_tensorflow(tmp_path: Path):
    import tensorflow as tf

    path = tmp_path / "log.tfrecord"
    path.write_bytes(prediction_log.encode(record()) + prediction_log.encode(record(rid="r2")))
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(str(path))]
    assert len(logs) == 2
    request = logs[0].predict_log.request
    assert (request.model_spec.name, request.model_spec.version.value,
            request.model_spec.signature_name) == ("digits", 3, "serving_default")
    np.testing.assert_array_equal(tf.make_ndarray(request.inputs["image"]),
                                  IMAGE.astype(np.float32))
    scores = tf.make_ndarray(logs[0].predict_log.response.outputs["scores"])
    assert scores.shape == (2, 2)
    assert logs[0].log_metadata.sampling_config.sampling_rate == 1.0
    assert prediction_log.replayable(logs[0], "digits")


def test_shape_only_and_failed_records_are_not_replayable():
    shapes = prediction_log.prediction_log(record(keep="shape"))
    assert shapes.predict_log.request.inputs["image"].tensor_shape.dim[0].size == 2
    assert not prediction_log.replayable(shapes)
    assert not prediction_log.replayable(prediction_log.prediction_log(record(error="x")))


def test_strings_in_prediction_logs():
    log = prediction_log.prediction_log(record({"text": np.array([b"a", b"bc"], object)}))
    assert list(log.predict_log.request.inputs["text"].string_val) == [b"a", b"bc"]


# --- the queue and the sinks ----------------------------------------------------------------


def settings(url: str, **changes: Any) -> PayloadLogArgs:
    return PayloadLogArgs.model_validate({"sample_rate": 1.0, "sink": {"url": url}, **changes})


class DeadSink:
    """A sink that is down: every write fails after ``delay_s``."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s, self.calls = delay_s, 0

    def encode(self, record: PayloadRecord) -> bytes:
        return b"x"

    def write(self, items: list[Any]) -> int:
        self.calls += 1
        time.sleep(self.delay_s)
        raise SinkFailed(len(items), cause="connection refused")

    def tick(self) -> int:
        return 0

    def close(self) -> int:
        return 0


def test_a_dead_sink_never_slows_offers_and_every_record_is_counted(tmp_path: Path):
    log = ModelLog("digits", settings(str(tmp_path), queue_records=8, batch_records=4),
                   PayloadLogMetrics(), DeadSink(delay_s=0.05))
    started = time.perf_counter()
    for i in range(200):
        log.offer(record(rid=str(i)))
    assert time.perf_counter() - started < 0.5  # 200 offers, no waiting on the sink
    log.close(timeout_s=1.0)
    counts = log.counts
    assert counts.written == 0
    assert sum(counts.dropped.values()) == counts.offered == 200
    assert counts.dropped["queue_full"] >= 150 and counts.dropped["sink_error"] >= 1
    assert log.sink.calls <= 4  # type: ignore[attr-defined]  # backed off, not hammered


def test_a_directory_sink_rotates_and_a_clean_stop_flushes(tmp_path: Path):
    log = ModelLog("digits", settings(str(tmp_path), sink={"url": str(tmp_path),
                                                           "rotate_bytes": 2000},
                                   batch_records=4),
                   PayloadLogMetrics())
    for i in range(20):
        log.offer(record(rid=f"r{i}"))
    log.close()
    assert log.counts.written == 20 and not log.counts.dropped
    files = sorted((tmp_path / "digits").glob("digits-*.jsonl"))
    assert len(files) > 1
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert [e["id"] for e in lines] == [f"r{i}" for i in range(20)]


def test_settings_retune_live_and_unknown_models_are_refused(tmp_path: Path):
    logs = PayloadLogs()
    logs.serving(frozenset({"digits"}))
    with pytest.raises(ValueError, match="ghost"):
        logs.configure({"ghost": settings(str(tmp_path))})
    logs.configure({"digits": settings(str(tmp_path))})
    first = logs.log("digits")
    logs.configure({"digits": settings(str(tmp_path), sample_rate=0.5, default="full")})
    assert logs.log("digits") is first and first.settings.sample_rate == 0.5  # type: ignore[union-attr]
    logs.configure({"digits": settings(str(tmp_path / "other"))})
    assert logs.log("digits") is not first
    logs.configure({})
    assert logs.log("digits") is None and logs.sample("digits") is None
    logs.close()


def test_sampling_draws_the_rate(tmp_path: Path):
    logs = PayloadLogs()
    logs.configure({"digits": settings(str(tmp_path), sample_rate=0.25)})
    drawn = sum(logs.sample("digits") is not None for _ in range(4000))
    assert 800 < drawn < 1200
    logs.configure({"digits": settings(str(tmp_path), sample_rate=0.0)})
    assert all(logs.sample("digits") is None for _ in range(100))
    logs.close()


def test_the_s3_sink_uploads_an_object_per_file(s3: s3fs.S3FileSystem, bucket: str):  # noqa: F811
    url = f"s3://{bucket}/payloads"
    log = ModelLog("digits", settings(url, sink={"url": url, "format": "prediction_log"}),
                   PayloadLogMetrics())
    for i in range(5):
        log.offer(record(rid=f"r{i}"))
    log.close()
    assert log.counts.written == 5
    (key,) = s3.ls(f"{bucket}/payloads/digits")
    assert key.endswith(".tfrecord")
    logs = list(prediction_log.read_tfrecords(io.BytesIO(s3.cat(key))))
    assert len(logs) == 5


class Receiver(BaseHTTPRequestHandler):
    """A CloudEvents collector: keeps what it is posted."""

    events: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.events.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    Receiver.events = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/events"
    server.shutdown()
    server.server_close()


def test_the_http_sink_posts_kserve_cloudevents(receiver: str):
    log = ModelLog("digits", settings(receiver, sink={"url": receiver, "namespace": "prod"}),
                   PayloadLogMetrics())
    for i in range(3):
        log.offer(record(rid=f"r{i}"))
    log.close()
    assert log.counts.written == 3
    events = Receiver.events
    assert [(h["ce-id"], h["ce-type"].rsplit(".", 1)[1]) for h, _ in events] == [
        (f"r{i}", kind) for i in range(3) for kind in ("request", "response")]
    headers, body = events[0]
    assert headers["ce-specversion"] == "1.0" and headers["ce-namespace"] == "prod"
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["inputs"][0]["shape"] == [2, 4, 4, 1]


def test_an_http_collector_that_is_down_drops_and_counts():
    url = "http://127.0.0.1:9/events"  # discard port: nothing listens
    log = ModelLog("digits", settings(url), PayloadLogMetrics())
    for i in range(10):
        log.offer(record(rid=f"r{i}"))
    log.close(timeout_s=1.0)
    assert log.counts.written == 0 and sum(log.counts.dropped.values()) == 10


# --- back in as warm-up ---------------------------------------------------------------------


def test_logged_records_become_a_versions_warmup(tmp_path: Path):
    from deployments.replica.warmup import read_warmup

    log_dir = tmp_path / "log"
    log = ModelLog("digits", settings(str(log_dir), sink={"url": str(log_dir),
                                                          "format": "prediction_log"}),
                   PayloadLogMetrics())
    for i in range(10):
        log.offer(record(rid=f"r{i}", keep="shape" if i % 2 else "full"))
    log.close()
    version = tmp_path / "model" / "2"
    assert warmup_main([str(log_dir), str(version), "-n", "3", "--model", "digits"]) == 0
    calls = read_warmup(version)
    assert len(calls) == 3  # of the 5 replayable ones
    assert {c.kind for c in calls} == {"predict"}
    np.testing.assert_array_equal(calls[0].inputs["image"], IMAGE.astype(np.float32))
    assert warmup_main([str(log_dir), str(version), "--model", "other"]) == 1
