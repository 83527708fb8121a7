"""TF Serving's model warm-up: ``assets.extra/tf_serving_warmup_requests``
read as TF Serving reads it (TFRecords of real ``PredictionLog`` protos,
CRCs checked, at most 1000 records, predict/classify/regress/multi-inference
only) and replayed in order, each record ``iterations`` times, with errors
that name the record and the file."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from tensorflow_serving.apis import (
    input_pb2,
    prediction_log_pb2,
)

from deployments.codecs.tfserving_protos import example_pb2, tensor_pb2, types_pb2
from deployments.config import ModelArgs
from deployments.errors import BadRequest
from deployments.replica.runner import SavedModelRunner
from deployments.replica.served import warm_call
from deployments.replica.warmup import (
    MAX_RECORDS,
    WARMUP_FILE,
    WarmupCall,
    WarmupError,
    WarmupKind,
    read_warmup,
    replay,
)
from harness.warmup_records import (
    CLASSIFY,
    REGRESS,
    classify_log,
    example,
    examples_input,
    float_tensor,
    multi_log,
    predict_log,
    regress_log,
    write,
)
from tests.common import TFSERVING_TESTDATA


def test_every_supported_log_type_is_read_as_its_calls(tmp_path: Path) -> None:
    ex = example(x=2.0)
    context = example(c=1.0)
    with_context = input_pb2.Input(example_list_with_context=input_pb2.ExampleListWithContext(
        examples=[ex], context=context))
    write(tmp_path,
          predict_log(x=float_tensor(2.0)),
          classify_log("classify_x", examples_input(ex)),
          regress_log("regress_x", examples_input(ex)),
          regress_log("", with_context),
          multi_log(examples_input(ex, ex), ("regress_x", REGRESS), ("classify_x", CLASSIFY)))

    calls = read_warmup(tmp_path)

    assert [(c.record, c.kind, c.signature_name) for c in calls] == [
        (0, "predict", "serving_default"), (1, "classify", "classify_x"),
        (2, "regress", "regress_x"), (3, "regress", ""),
        (4, "regress", "regress_x"), (4, "classify", "classify_x")]
    predict = calls[0]
    assert list(predict.inputs) == ["x"]
    assert predict.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(predict.inputs["x"], np.array([2.0], np.float32))
    assert predict.output_filter == ("y",)
    for call in calls[1:3]:
        assert list(call.inputs) == [""]
        assert call.output_filter == ()
        examples = call.inputs[""]
        assert examples.dtype == object and examples.shape == (1,)
        assert examples[0] == ex.SerializeToString()
    # The context is serialized before the example; parsed, the two merge.
    merged = calls[3].inputs[""][0]
    assert merged == context.SerializeToString() + ex.SerializeToString()
    assert set(example_pb2.Example.FromString(merged).features.feature) == {"c", "x"}
    for call in calls[4:]:
        assert call.inputs[""].tolist() == [ex.SerializeToString()] * 2


def test_no_warmup_file_means_no_calls(tmp_path: Path) -> None:
    (tmp_path / "assets.extra").mkdir()
    assert read_warmup(tmp_path) == []


def test_a_corrupted_file_names_the_file_and_the_record(tmp_path: Path) -> None:
    first = predict_log(x=float_tensor(2.0))
    path = write(tmp_path, first, predict_log(x=float_tensor(3.0)))
    data = bytearray(path.read_bytes())
    # A record: length (8 bytes), its CRC (4), the data, the data's CRC (4).
    second_data = 16 + len(first.SerializeToString()) + 12
    data[second_data + 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(WarmupError) as failed:
        read_warmup(tmp_path)
    assert failed.value.message == str(failed.value)
    assert str(path) in failed.value.message
    assert "warmup record 1 of" in failed.value.message
    assert "Please verify your warmup data is in TFRecord format." in failed.value.message


def test_a_file_that_is_not_tfrecords_is_refused(tmp_path: Path) -> None:
    path = tmp_path / WARMUP_FILE
    path.parent.mkdir()
    path.write_bytes(b"predict_log { request { } }\n")
    with pytest.raises(WarmupError, match=r"warmup record 0 of .*tf_serving_warmup_requests.*"
                                          r"TFRecord format"):
        read_warmup(tmp_path)


def test_a_record_that_is_not_a_prediction_log_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, predict_log(x=float_tensor(2.0)), b"\xff\xff\xff\xff")
    with pytest.raises(WarmupError, match="Failed to parse warmup record 1 of") as failed:
        read_warmup(tmp_path)
    assert str(path) in failed.value.message


@pytest.mark.parametrize(("log", "named"), [
    (prediction_log_pb2.PredictionLog(session_run_log=prediction_log_pb2.SessionRunLog()),
     "session_run_log"),
    (prediction_log_pb2.PredictionLog(
        predict_streamed_log=prediction_log_pb2.PredictStreamedLog()), "predict_streamed_log"),
])
def test_an_unsupported_log_names_its_record(tmp_path: Path,
                                             log: prediction_log_pb2.PredictionLog,
                                             named: str) -> None:
    path = write(tmp_path, predict_log(x=float_tensor(2.0)), log)
    with pytest.raises(WarmupError) as failed:
        read_warmup(tmp_path)
    assert failed.value.message == (f"warmup record 1 of {path}: Unsupported log_type for "
                                    f"warmup: {named}")


def test_a_record_with_no_log_is_skipped_as_tf_serving_skips_it(tmp_path: Path) -> None:
    write(tmp_path, prediction_log_pb2.PredictionLog(), predict_log(x=float_tensor(2.0)))
    assert [(call.kind, call.record) for call in read_warmup(tmp_path)] == [("predict", 1)]


def test_a_multi_inference_task_must_classify_or_regress(tmp_path: Path) -> None:
    write(tmp_path, multi_log(examples_input(example(x=2.0)), ("regress_x", REGRESS),
                              ("serving_default", "tensorflow/serving/predict")))
    with pytest.raises(WarmupError, match=r"warmup record 0 of .*: Unsupported signature "
                                          r"method_name: tensorflow/serving/predict$"):
        read_warmup(tmp_path)


def test_a_tensor_that_does_not_decode_names_its_record(tmp_path: Path) -> None:
    write(tmp_path, predict_log(x=float_tensor(2.0)),
          predict_log(x=float_tensor(1.0, 2.0, 3.0, shape=(2,))))
    with pytest.raises(WarmupError, match=r"warmup record 1 of .*: input 'x': 3 values in "
                                          r"float_val for shape \[2\]"):
        read_warmup(tmp_path)


def test_examples_must_be_there(tmp_path: Path) -> None:
    write(tmp_path, classify_log("classify_x", input_pb2.Input()))
    with pytest.raises(WarmupError, match=r"warmup record 0 of .*: Input is empty\.$"):
        read_warmup(tmp_path)


def test_at_most_max_records(tmp_path: Path) -> None:
    assert MAX_RECORDS == 1000  # TF Serving's WarmupConsts::kMaxNumRecords
    log = predict_log()  # no inputs: small and quick to read
    write(tmp_path, *[log] * MAX_RECORDS)
    assert len(read_warmup(tmp_path)) == MAX_RECORDS

    path = write(tmp_path, *[log] * (MAX_RECORDS + 1))
    with pytest.raises(WarmupError) as failed:
        read_warmup(tmp_path)
    assert failed.value.message == (f"Number of warmup records exceeds the maximum "
                                    f"({MAX_RECORDS}) at {path}")


def call(record: int, kind: WarmupKind = "predict", signature: str = "serving_default"
         ) -> WarmupCall:
    return WarmupCall(kind, signature, {}, record)


def test_replay_names_the_record_that_failed() -> None:
    ran: list[int] = []

    def run(c: WarmupCall) -> None:
        ran.append(c.record)
        if len(ran) == 2:
            raise BadRequest("input 'x' is missing")

    with pytest.raises(WarmupError) as failed:
        replay([call(0), call(1, "regress", ""), call(2)], run)
    assert failed.value.message == ("warmup record 1 (regress, the default signature) failed: "
                                    "input 'x' is missing")
    assert isinstance(failed.value.__cause__, BadRequest)
    assert ran == [0, 1]

    def crash(c: WarmupCall) -> None:
        raise RuntimeError("no kernel")

    with pytest.raises(WarmupError, match=r"^warmup record 3 \(predict, signature "
                                          r"'serving_default'\) failed: no kernel$"):
        replay([call(3)], crash)


def test_replay_runs_each_record_its_iterations_before_the_next() -> None:
    ran: list[tuple[int, str]] = []
    calls = [call(0), call(1, "regress", "r"), call(1, "classify", "c")]
    seconds = replay(calls, lambda c: ran.append((c.record, c.kind)), iterations=3)
    assert ran == [(0, "predict")] * 3 + [(1, "regress"), (1, "classify")] * 3
    assert seconds >= 0.0

    ran.clear()
    replay(calls, lambda c: ran.append((c.record, c.kind)))
    assert ran == [(0, "predict"), (1, "regress"), (1, "classify")]


@pytest.mark.skipif(not TFSERVING_TESTDATA.is_dir(), reason="no TF Serving test data beside us")
def test_tf_servings_records_replay_on_its_test_model(tmp_path: Path) -> None:
    """What the model replica runs at load (``served.warm_call``) on TF
    Serving's TF1 half_plus_two: every kind of record, each as its protocol
    runs it; a record the model refuses fails the replay, naming it."""
    version = tmp_path / "00000123"
    shutil.copytree(TFSERVING_TESTDATA / "saved_model_half_plus_two_cpu" / "00000123", version)
    runner = SavedModelRunner(ModelArgs(name="default", path=str(tmp_path)), 123, version,
                              "/CPU:0")
    examples = examples_input(example(x=2.0))
    write(version, predict_log("", x=float_tensor(2.0, 4.0, shape=(2,))),
          classify_log("classify_x_to_y", examples), regress_log("regress_x_to_y", examples),
          multi_log(examples, ("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY)))
    ran: list[tuple[str, str]] = []
    calls = read_warmup(version)
    replay(calls, lambda call: (warm_call(runner, call),
                                ran.append((call.kind, call.signature_name))))
    assert ran == [("predict", ""), ("classify", "classify_x_to_y"),
                   ("regress", "regress_x_to_y"), ("regress", "regress_x_to_y"),
                   ("classify", "classify_x_to_y")]
    bad = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"two"])
    bad.tensor_shape.dim.add(size=1)
    write(version, predict_log("", x=float_tensor(2.0)), predict_log("", x=bad))
    with pytest.raises(WarmupError, match=r"warmup record 1 \(predict, the default "
                                          r"signature\) failed: input 'x' has dtype object"):
        replay(read_warmup(version), partial(warm_call, runner))
