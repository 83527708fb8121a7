"""Pipelines without models: the YAML's wiring checked as it is parsed, the
metadata composed from the models' signatures, and one step run over a call
whose requests fail or succeed each on their own."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

import numpy as np
import pytest
from pydantic import ValidationError

from deployments.config import AppArgs, PipelineArgs
from deployments.errors import BadRequest, ModelFailed, ServeError
from deployments.pipeline_plan import PipelineMisconfigured, Plan, Step
from deployments.replica.pipeline_step import StepLog, run_step
from deployments.signature import ModelMetadata, TensorSpec
from deployments.user_code import Processor

MODELS = [{"name": "detector", "path": "d"}, {"name": "classifier", "path": "c"}]
CHAIN = {"name": "reader", "steps": [
    {"model": "detector", "name": "detect"},
    {"model": "classifier", "inputs": {"image": "request.image", "box": "detect.box"},
     "transform": "pkg.crop:crop"}],
    "outputs": {"scores": "classifier.scores", "box": "detect.box"}}


def pipeline(**changes: object) -> PipelineArgs:
    return PipelineArgs.model_validate({**CHAIN, **changes})


@pytest.mark.parametrize(("changes", "message"), [
    ({"steps": [{"model": "detector"}, {"model": "detector"}]},
     "step names must be unique and not 'request': 'detector'"),
    ({"steps": [{"model": "detector", "name": "request"}]}, "not 'request': 'request'"),
    ({"steps": [{"model": "detector"}, {"model": "classifier"}]},
     "pipeline 'reader' step 'classifier': name its inputs"),
    ({"steps": [{"model": "detector", "transform": "pkg.t:f"}]}, "name its inputs"),
    ({"steps": [{"model": "detector", "inputs": {"image": "classifier.scores"}},
                {"model": "classifier", "inputs": {"image": "detector.box"}}]},
     "step 'detector': 'classifier.scores' names no earlier step (it may name: request)"),
    ({"outputs": {"scores": "request.image"}},
     "outputs: 'request.image' names no earlier step (it may name: detect, classifier)"),
    ({"outputs": {"scores": "scores"}}, "'scores' is not a tensor reference"),
    ({"scores_output": "probabilities"},
     "scores_output 'probabilities' is not one of its outputs (scores, box)"),
    ({"steps": [{"model": "detector"}, {"model": "classifier",
                                        "inputs": {"image": "request.image"}}], "outputs": None},
     "steps ['detector'] feed no later step and no output"),
    ({"steps": [{"model": "det.v2"}]}, "model 'det.v2' has a dot in its name, which step "
                                       "references cannot hold: give the step a name"),
    ({"steps": [{"model": "detector", "inputs": {}}]}, "at least 1 item"),
])
def test_wiring_errors_are_named_as_the_config_is_parsed(changes: dict, message: str):
    with pytest.raises(ValidationError, match=re.escape(message)):
        pipeline(**changes)


def test_pipelines_run_served_models_under_names_of_their_own():
    with pytest.raises(ValidationError, match="runs models this app does not serve: detector"):
        AppArgs.model_validate({"models": MODELS[1:], "pipelines": [CHAIN]})
    with pytest.raises(ValidationError, match=r"must be unique and not.*: detector"):
        AppArgs.model_validate({"models": MODELS, "pipelines": [{**CHAIN, "name": "detector"}]})
    args = AppArgs.model_validate({"models": MODELS, "pipelines": [CHAIN]})
    assert args.transforms() == {"classifier": ("pkg.crop:crop",)}


def test_each_step_carries_its_wiring():
    first, last = Plan.from_args(pipeline()).steps
    assert (first.inputs, first.upstream, first.reads_request) == (None, (), True)
    assert last.inputs == (("image", "request", "image"), ("box", "detect", "box"))
    assert last.upstream == ("detect",)  # its own outputs are not upstream
    assert last.outputs == (("scores", "classifier", "scores"), ("box", "detect", "box"))
    assert str(last) == "pipeline 'reader' step 'classifier'"


def spec(name: str, *shape: int | None, dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name, dtype, (None, *shape))


DETECTOR = ModelMetadata(
    name="detector", version=3, signature_name="serving_default",
    inputs=(spec("image", 40, 40, 1),), outputs=(spec("box", 4),), scores_output="box",
    labels=(), image_input="image", max_batch_size=16)
CLASSIFIER = ModelMetadata(
    name="classifier", version=7, signature_name="serving_default",
    inputs=(spec("image", 28, 28, 1),), outputs=(spec("scores", 10), spec("logits", 10)),
    scores_output="scores", labels=tuple("abcdefghij"), image_input="image")


def test_metadata_is_composed_from_the_models():
    meta = Plan.from_args(pipeline()).metadata({"detect": DETECTOR,
                                                "classifier": CLASSIFIER})
    assert (meta.name, meta.version, meta.max_batch_size) == ("reader", 1, 16)
    assert meta.inputs == (spec("image", 40, 40, 1),)  # typed by the detector's input
    assert meta.outputs == (spec("box", 4), spec("scores", 10))
    assert (meta.scores_output, meta.labels) == ("scores", tuple("abcdefghij"))
    assert meta.image_input == "image"
    signature = meta.signature_defs["serving_default"]
    assert signature["inputs"]["image"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["outputs"]["scores"]["tensor_shape"]["dim"]] == \
        ["-1", "10"]


def test_outputs_not_from_a_models_scores_are_labelled_by_index():
    plan = Plan.from_args(pipeline(outputs={"logits": "classifier.logits"}))
    meta = plan.metadata({"detect": DETECTOR, "classifier": CLASSIFIER})
    assert (meta.scores_output, meta.labels) == ("logits", tuple("0123456789"))


@pytest.mark.parametrize(("changes", "message"), [
    ({"outputs": {"scores": "classifier.probabilities"}},
     "step 'classifier' reads 'probabilities' from model 'classifier', which has no such "
     "output (it has: scores, logits)"),
    ({"steps": [{"model": "detector", "name": "detect"},
                {"model": "classifier", "inputs": {"pixels": "detect.box"}}], "outputs": None},
     "step 'classifier' feeds ['pixels'], but model 'classifier' takes 'image': "
     "float32[N, 28, 28, 1]"),
    ({"steps": [{"model": "detector", "name": "detect"},
                {"model": "classifier", "inputs": {"image": "request.image"}}]},
     "request input 'image' is float32[N, 40, 40, 1], but it feeds a model input of "
     "float32[N, 28, 28, 1]"),
    ({"steps": [{"model": "classifier", "inputs": {"image": "request.photo"},
                 "transform": "pkg.t:f"}], "outputs": None},
     "request inputs ['photo'] only feed transforms, so their type is unknown: declare each "
     "under the pipeline's inputs"),
    ({"inputs": {"image": {"dtype": "float32", "shape": [-1, 40, 40, 3]}}},
     "request input 'image' is float32[N, 40, 40, 3], but it feeds a model input of "
     "float32[N, 40, 40, 1]"),
])
def test_wiring_that_does_not_fit_the_models_is_named(changes: dict, message: str):
    plan = Plan.from_args(pipeline(**changes))
    with pytest.raises(PipelineMisconfigured, match=re.escape(message)):
        plan.metadata({"detect": DETECTOR, "classifier": CLASSIFIER})


def test_a_model_without_serving_default_cannot_be_a_step():
    """A step runs its model's default signature; TF Serving's models may lack it."""
    no_default = replace(CLASSIFIER, signature_name="a", unnamed_refused=True)
    with pytest.raises(PipelineMisconfigured, match=re.escape(
            "step 'classifier' runs model 'classifier', which has no 'serving_default' "
            "signature (it has: a): set the model's signature_name")):
        Plan.from_args(pipeline()).metadata({"detect": DETECTOR, "classifier": no_default})


def crop(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A stand-in transform: fails for a box of zeros, as user code may."""
    if not inputs["box"].any():
        raise BadRequest("no digit found")
    return {"image": np.zeros((len(inputs["image"]), 28, 28, 1), np.float32)
            + inputs["box"][:, :1, None, None]}


def test_a_step_answers_each_request_on_its_own():
    _, last = Plan.from_args(pipeline()).steps
    request = [{"image": np.ones((n, 40, 40, 1), np.float32)} for n in (1, 2, 1, 1)]
    boxes = [{"box": np.full((1, 4), 0.5, np.float32)}, {"box": np.full((2, 4), 0.25, np.float32)},
             ModelFailed("the detector failed"), {"box": np.zeros((1, 4), np.float32)}]
    seen: list[int] = []

    async def infer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(len(inputs["image"]))
        mean = inputs["image"].mean(axis=(1, 2, 3))
        return {"scores": np.repeat(mean[:, None], 10, 1), "logits": np.zeros((len(mean), 10))}

    log = StepLog()
    transforms = {last.transform: Processor.load("classifier", "transform", f"{__name__}:crop")}
    answers = asyncio.run(run_step(last, request, [boxes], CLASSIFIER, infer, transforms, log))
    assert seen == [1, 2]
    assert sorted(answers[0]) == ["box", "scores"]
    np.testing.assert_allclose(answers[0]["scores"], 0.5)
    np.testing.assert_allclose(answers[1]["scores"], 0.25)
    np.testing.assert_array_equal(answers[1]["box"], boxes[1]["box"])
    assert answers[2] is boxes[2]  # the upstream error answers it unchanged
    assert isinstance(answers[3], BadRequest) and answers[3].message == "no digit found"
    stats = log.as_dict()["reader/classifier"]
    assert (stats["calls"], stats["requests"]) == (1, 4)


def test_inputs_a_step_built_wrong_are_the_pipelines_fault():
    step = Step("reader", "read", "classifier", (("image", "detect", "crop"),))
    crops = [{"crop": np.ones((1, 40, 40, 1), np.float32)}]

    async def infer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise AssertionError("not run")

    (answer,) = asyncio.run(run_step(step, [], [crops], CLASSIFIER, infer))
    assert isinstance(answer, ServeError) and answer.status == 500
    assert answer.message.startswith("pipeline 'reader' step 'read': input 'image' has shape "
                                      "[1, 40, 40, 1], expected float32[N, 28, 28, 1]")
    # The same inputs straight from the request are the client's to fix.
    direct = Step("reader", "read", "classifier", (("image", "request", "image"),))
    (answer,) = asyncio.run(run_step(direct, [{"image": crops[0]["crop"]}], [], CLASSIFIER,
                                     infer))
    assert isinstance(answer, BadRequest) and answer.status == 400


def test_a_request_left_without_rows_answers_empty_outputs_unrun():
    step = Step("reader", "read", "classifier", (("image", "detect", "crop"),))
    crops = [{"crop": np.zeros((0, 28, 28, 1), np.float32)}]

    async def infer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise AssertionError("not run")

    (answer,) = asyncio.run(run_step(step, [], [crops], CLASSIFIER, infer))
    assert {n: a.shape for n, a in answer.items()} == {"scores": (0, 10), "logits": (0, 10)}


def test_side_outputs_are_merged_by_the_ingress_not_waited_for_by_the_last_step():
    plan = Plan.from_args(PipelineArgs.model_validate({"name": "both", "steps": [
        {"name": "a", "model": "classifier", "inputs": {"image": "request.image"}},
        {"name": "b", "model": "classifier", "inputs": {"image": "request.image"}}],
        "outputs": {"first": "a.scores", "second": "b.scores"}}))
    b = plan.steps[1]
    assert b.upstream == () and b.outputs == (("second", "b", "scores"),)
    assert plan.answering == ("b", "a")
    merged = plan.merge({"b": [{"second": np.ones(1)}, ModelFailed("b failed")],
                         "a": [{"scores": np.zeros(1)}, {"scores": np.zeros(1)}]})
    assert sorted(merged[0]) == ["first", "second"]
    assert isinstance(merged[1], ModelFailed)
    meta = plan.metadata({"a": CLASSIFIER, "b": CLASSIFIER})
    assert [o.name for o in meta.outputs] == ["first", "second"]


def test_an_earlier_output_must_fit_the_input_it_feeds():
    plan = Plan.from_args(pipeline(steps=[
        {"model": "detector", "name": "detect"},
        {"model": "classifier", "inputs": {"image": "detect.box"}}], outputs=None))
    with pytest.raises(PipelineMisconfigured, match=re.escape(
            "feeds 'box' (float32[N, 4]) to input 'image' of float32[N, 28, 28, 1]")):
        plan.metadata({"detect": DETECTOR, "classifier": CLASSIFIER})


def test_request_inputs_only_a_transform_reads_are_declared():
    steps = [{"model": "classifier", "inputs": {"text": "request.text"},
              "transform": "pkg.tok:tokenize"}]
    plan = Plan.from_args(pipeline(steps=steps, outputs=None, inputs={
        "text": {"dtype": "string", "shape": [-1]}}))
    meta = plan.metadata({"classifier": CLASSIFIER})
    assert meta.inputs == (TensorSpec("text", "string", (None,)),)
    assert meta.image_input is None  # text, not images


@pytest.mark.parametrize(("inputs", "message"), [
    ({"text": {"dtype": "string", "shape": [3]}}, "the first dimension is the batch's"),
    ({"text": {"dtype": "string", "shape": [-1, -2]}}, "sizes are -1 or positive"),
    ({"text": {"dtype": "str", "shape": [-1]}}, "Input should be 'float16'"),
    ({"other": {"dtype": "string", "shape": [-1]}},
     "inputs ['other'] are declared but no step reads them"),
])
def test_declared_inputs_are_checked(inputs: dict, message: str):
    steps = [{"model": "classifier", "inputs": {"text": "request.text"},
              "transform": "pkg.tok:tokenize"}]
    with pytest.raises(ValidationError, match=re.escape(message)):
        pipeline(steps=steps, outputs=None, inputs=inputs)
