"""TF Serving warm-up files for tests: ``PredictionLog`` records of each
kind, built with TF Serving's own protos and written as TFRecords where TF
Serving looks for them (``assets.extra/tf_serving_warmup_requests``)."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from deployments.codecs.tfserving_protos import example_pb2, tensor_pb2, types_pb2
from deployments.replica.warmup import WARMUP_FILE

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


def example(**features: float) -> example_pb2.Example:
    ex = example_pb2.Example()
    for name, value in features.items():
        ex.features.feature[name].float_list.value.append(value)
    return ex


def spec(signature: str) -> model_pb2.ModelSpec:
    return model_pb2.ModelSpec(name="m", signature_name=signature)


def examples_input(*examples: example_pb2.Example) -> input_pb2.Input:
    return input_pb2.Input(example_list=input_pb2.ExampleList(examples=examples))


def predict_log(signature: str = "serving_default", **inputs: tensor_pb2.TensorProto
                ) -> prediction_log_pb2.PredictionLog:
    request = predict_pb2.PredictRequest(model_spec=spec(signature), output_filter=["y"])
    for name, proto in inputs.items():
        request.inputs[name].CopyFrom(proto)
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))


def float_tensor(*values: float, shape: tuple[int, ...] = (1,)) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=values)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def classify_log(signature: str, request_input: input_pb2.Input
                 ) -> prediction_log_pb2.PredictionLog:
    request = classification_pb2.ClassificationRequest(model_spec=spec(signature),
                                                       input=request_input)
    return prediction_log_pb2.PredictionLog(
        classify_log=prediction_log_pb2.ClassifyLog(request=request))


def regress_log(signature: str, request_input: input_pb2.Input
                ) -> prediction_log_pb2.PredictionLog:
    request = regression_pb2.RegressionRequest(model_spec=spec(signature), input=request_input)
    return prediction_log_pb2.PredictionLog(
        regress_log=prediction_log_pb2.RegressLog(request=request))


def multi_log(request_input: input_pb2.Input, *tasks: tuple[str, str]
              ) -> prediction_log_pb2.PredictionLog:
    request = inference_pb2.MultiInferenceRequest(input=request_input, tasks=[
        inference_pb2.InferenceTask(model_spec=spec(signature), method_name=method)
        for signature, method in tasks])
    return prediction_log_pb2.PredictionLog(
        multi_inference_log=prediction_log_pb2.MultiInferenceLog(request=request))


def write(version_dir: Path, *records: prediction_log_pb2.PredictionLog | bytes) -> Path:
    path = version_dir / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record if isinstance(record, bytes) else record.SerializeToString())
    return path
