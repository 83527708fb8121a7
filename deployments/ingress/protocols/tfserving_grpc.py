"""TensorFlow Serving's gRPC API through Ray Serve's gRPC proxy, beside
KServe V2's: ``tensorflow.serving.PredictionService`` (``Predict``,
``Classify``, ``Regress``, ``MultiInference``, ``GetModelMetadata``) and
``tensorflow.serving.ModelService`` (``GetModelStatus``,
``HandleReloadConfigRequest``: ``deployments.reloads``), so TF Serving's
own stubs speak to the app unmodified. The config enables it with
:func:`add_servicer` in ``grpc_options.grpc_servicer_functions``.

Each RPC takes the path its REST route takes (``protocols/tfserving.py``):
the same model resolution by version or label, the same checks and one
``DataPlane.infer`` call, so coalescing, deadlines and errors behave
alike; errors become TF Serving's status codes with our message.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, cast

import grpc
import numpy as np
from ray.serve.grpc_util import RayServegRPCContext

from deployments.codecs.tfserving_grpc import (
    encode_classify_response,
    encode_multi_inference_response,
    encode_predict_response,
    encode_regress_response,
    examples_bytes,
    model_metadata_response,
    model_status_response,
    parse_examples,
    parse_multi_inference,
    parse_predict_request,
)
from deployments.codecs.tfserving_protos import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from deployments.errors import BadRequest, Unimplemented
from deployments.ingress.budget import off_loop
from deployments.ingress.protocols import health_grpc
from deployments.ingress.protocols.grpc import GrpcFailure, GrpcService, rpc
from deployments.ingress.request import Answer, EncodedImages, Target
from deployments.reloads import request_reload


def add_servicer(servicer: Any, server: grpc.Server) -> None:
    """For ``grpc_options.grpc_servicer_functions``: both TF Serving services,
    and gRPC's health service beside them (``health_grpc.py``)."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
    health_grpc.add_servicer(servicer, server)


def _model_of(request: Any) -> str:
    spec = getattr(request, "model_spec", None)
    return spec.name if spec is not None else ""


_status = rpc("tfserving-grpc", _model_of)
# A reload waits for its models to load: only the client's deadline bounds it.
_reload_status = rpc("tfserving-grpc", _model_of, bounded=False)


def _target(request: Any, named: bool = True, required: bool = True) -> Target:
    """What a request's ``ModelSpec`` names (no version: the highest; a
    version set, 0 too, is that version, as TF Serving's
    ``ServableRequest::Specific``); TF Serving's 400s for no spec (where it
    is ``required``), and (where it looks a servable up: ``named``) for a
    spec without a name."""
    if required and not request.HasField("model_spec"):
        raise BadRequest("Missing ModelSpec")
    spec: model_pb2.ModelSpec = request.model_spec
    if named and not spec.name:
        raise BadRequest("ModelSpec has no name specified.")
    version = spec.version.value if spec.HasField("version") else None
    return Target(spec.name, version, spec.version_label or None, spec.signature_name)


class TFServingGrpcService(GrpcService):
    """TF Serving's RPCs, mixed into the ingress deployment (method names are
    the RPCs'; none is also a KServe V2 one)."""

    @_status
    async def Predict(self, request: predict_pb2.PredictRequest,
                      grpc_context: RayServegRPCContext) -> predict_pb2.PredictResponse:
        self._take_message(request)
        named = _target(request)
        meta = await self._plane.resolve(named)
        meta.check_input_count(len(request.inputs))
        limits = self._limits
        # Off the event loop, as HTTP bodies: a message may hold many inputs.
        parsed = await off_loop(parse_predict_request, request, limits.max_rows,
                                         limits.max_elements)
        self._plane.budget.take(parsed.decoded_bytes, "decoding the request's tensors")
        inputs: dict[str, np.ndarray | EncodedImages] = {**await off_loop(parsed.decode)}
        image = meta.image_input
        if image in inputs:
            given = cast(np.ndarray, inputs[image])
            if given.dtype == object:  # DT_STRING: encoded images
                inputs[image] = EncodedImages(list(given.reshape(-1)), given.shape)
        answer = await self._plane.infer(meta, inputs, named.pinned)
        return await off_loop(encode_predict_response, answer.meta, answer.outputs,
                                       parsed.output_filter)

    @_status
    async def Classify(self, request: classification_pb2.ClassificationRequest,
                       grpc_context: RayServegRPCContext
                       ) -> classification_pb2.ClassificationResponse:
        return encode_classify_response(*await self._examples(request, "classify"))

    @_status
    async def Regress(self, request: regression_pb2.RegressionRequest,
                      grpc_context: RayServegRPCContext) -> regression_pb2.RegressionResponse:
        return encode_regress_response(*await self._examples(request, "regress"))

    async def _examples(self, request: Any, verb: str) -> Answer:
        """A ``Classify``/``Regress`` call: its examples serialized (off the
        event loop) for the signature's examples input, run like any request."""
        self._take_message(request)
        named = _target(request)
        meta = await self._plane.resolve(named)
        self._plane.budget.take(examples_bytes(request.input), "the serialized examples")
        inputs: dict[str, np.ndarray] = await off_loop(
            parse_examples, request.input, meta, verb, self._limits.max_rows)
        return await self._plane.infer(meta, inputs, named.pinned)

    @_status
    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                               grpc_context: RayServegRPCContext
                               ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        meta = await self._plane.resolve(_target(request))
        return model_metadata_response(meta, request.metadata_field)

    @_status
    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                             grpc_context: RayServegRPCContext
                             ) -> get_model_status_pb2.GetModelStatusResponse:
        return model_status_response(await self._plane.statuses(
            _target(request, named=False)))

    @_status
    async def MultiInference(self, request: inference_pb2.MultiInferenceRequest,
                             grpc_context: RayServegRPCContext
                             ) -> inference_pb2.MultiInferenceResponse:
        """Several classify/regress tasks on the same examples: each runs as its
        own signature's request (batched with others), one answer each."""
        self._take_message(request)
        if not request.tasks:
            raise BadRequest("MultiInferenceRequest must have at least one task")
        named = replace(_target(request.tasks[0], required=False), signature=None)
        meta = await self._plane.resolve(named)
        self._plane.budget.take(examples_bytes(request.input), "the serialized examples")
        tasks = await off_loop(parse_multi_inference, request, meta, self._limits.max_rows)
        answers = await asyncio.gather(*(self._plane.infer(task.meta, task.inputs, named.pinned)
                                         for task in tasks))
        return encode_multi_inference_response(
            [(task, answer.meta, answer.outputs)
             for task, answer in zip(tasks, answers, strict=True)])

    @_reload_status
    async def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest,
                                        grpc_context: RayServegRPCContext
                                        ) -> model_management_pb2.ReloadConfigResponse:
        """The config's models served from now on, as TF Serving's reload:
        answered once the added ones are available (``ray-tf-serve`` only)."""
        status = await request_reload(request.config.SerializeToString())
        if status is None:
            raise Unimplemented("models are configured in the app's YAML: change it and "
                                "redeploy (serve deploy); HandleReloadConfigRequest reloads "
                                "the models of ray-tf-serve, TF Serving's command")
        code, message = status
        if code != "OK":
            raise GrpcFailure(grpc.StatusCode[code], message)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.SetInParent()  # OK, set as TF Serving sets it
        # TF Serving reports how each named metric of its own grew; we keep
        # none of those counters, and it answers 0 for a metric it lacks.
        response.metric.extend(model_management_pb2.Metric(name=name, int64_value_increase=0)
                               for name in request.metric_names)
        return response
