"""The native API: upload images (raw, multipart) or JSON instances, get the
top classes back. Also what Python handle callers use (:meth:`NativeApi.predict`).

    POST /predict                                   the default (first) model
    POST /models/{name}[/versions/{version}]/predict
    GET  /models                                    what is served
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from ray import ObjectRef
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

from deployments.codecs.predictions import json_values, parse_flag, parse_top_k, top_k_predictions
from deployments.codecs.tensor import json_inputs, rows_by_input
from deployments.config import InputLimits
from deployments.errors import (
    BadRequest,
    PayloadTooLarge,
    ServeError,
    UnsupportedMediaType,
)
from deployments.ingress.budget import off_loop
from deployments.ingress.dataplane import DataPlane
from deployments.ingress.protocols.http import (
    PortableJSON,
    media_type,
    parse_json_body,
    read_body,
    target,
    with_images,
)
from deployments.ingress.protocols.routes import ApiRoute, model_routes
from deployments.ingress.request import EncodedImages, RequestInputs, Target
from deployments.signature import ModelMetadata, by_name

# Media types handled as a single encoded image besides image/*.
_OCTET_STREAM = "application/octet-stream"


class NativeApi:
    def __init__(self, plane: DataPlane, limits: InputLimits, top_k: int) -> None:
        self._plane = plane
        self._limits = limits
        self._default_top_k = top_k

    def routes(self) -> list[ApiRoute]:
        return [
            ApiRoute("/predict", self.predict_http, "POST", "native.predict", "native"),
            ApiRoute("/models", self.list_models, "GET", "native.models", "native"),
            *model_routes("/models", "/predict", self.predict_http, "POST", "native.predict",
                          "native"),
        ]

    async def predict(
        self, inputs: np.ndarray | dict[str, np.ndarray | ObjectRef],
        top_k: int | str | None = None, scores: bool | str = False,
        model: str | None = None, version: int | str | None = None,
        signature_name: str | None = None,
    ) -> dict[str, Any]:
        """Predict a batch in the model's input shape, bare or by input name
        (an array or an ``ObjectRef``): the top classes per row (of the
        model's default signature, or ``signature_name``)."""
        named = Target(model, version, signature=signature_name)
        meta = await self._plane.resolve(named)
        return await self._predict(meta, by_name(inputs, meta), top_k, scores, named.pinned)

    async def _predict(self, meta: ModelMetadata, inputs: RequestInputs,
                       top_k: int | str | None, scores: bool | str | None,
                       pinned: bool) -> dict[str, Any]:
        include_scores = parse_flag(scores, "scores")  # the query is checked before the
        if meta.labels:                                 # model runs
            parse_top_k(top_k, self._default_top_k, len(meta.labels))
        # The version that answered (it may have followed a redeploy) labels it.
        meta, outputs = await self._plane.infer(meta, inputs, pinned)
        answer: dict[str, Any] = {"model": meta.name, "version": meta.version}
        scores_given = outputs.get(meta.scores_output)
        # A classifier: the best classes of its scores (unless postprocess
        # code dropped them or changed their shape: then every output as it is).
        ranked = bool(meta.labels) and scores_given is not None and scores_given.ndim >= 1 \
            and scores_given.size == len(scores_given) * len(meta.labels)
        if ranked:
            k = parse_top_k(top_k, self._default_top_k, len(meta.labels))
            answer["predictions"] = top_k_predictions(cast(np.ndarray, scores_given),
                                                      meta.labels, k,
                                                      include_scores)
        others = {name: json_values(name, a) for name, a in outputs.items()
                  if not (ranked and name == meta.scores_output)}
        if others:  # every other output as it is
            answer["outputs"] = others
        return answer

    async def list_models(self, request: Request) -> JSONResponse:
        models: list[dict[str, Any]] = []
        for name in self._plane.registry.names:
            try:
                versions = await self._plane.versions(name)
            except ServeError as exc:  # one model down (or a pipeline miswired) hides no other
                models.append({"name": name, "error": exc.message})
                continue
            latest = versions[max(versions)]
            main = latest.image_spec() if latest.takes_images else latest.inputs[0]
            model: dict[str, Any] = {
                "name": name, "versions": sorted(versions),
                "input": "image" if latest.takes_images else "tensor",
                "input_shape": [d or -1 for d in main.shape],
                "inputs": [{"name": s.name, "dtype": s.dtype,
                            "shape": [d or -1 for d in s.shape]} for s in latest.inputs],
                "labels": list(latest.labels)}
            if latest.takes_images:
                model["preprocessing"] = latest.preprocessing.model_dump(mode="json")
            models.append(model)
        return JSONResponse({"default": self._plane.registry.default, "models": models})

    async def predict_http(self, request: Request) -> JSONResponse:
        kind = media_type(request)
        if kind.startswith("image/") or kind == _OCTET_STREAM:
            decode = self._decode_image
        elif kind == "multipart/form-data":
            decode = self._decode_multipart
        elif kind == "application/json":
            decode = self._decode_json
        else:
            raise UnsupportedMediaType(
                f"unsupported Content-Type {kind or '(none)'!r}: send image/*, "
                "multipart/form-data with image files, or application/json with \"instances\""
            )
        named = target(request)
        meta = await self._plane.resolve(named)
        body = await read_body(request, self._limits.max_body_bytes, self._plane.budget)
        inputs = await decode(request, body, meta)
        params = request.query_params
        return PortableJSON(await self._predict(meta, inputs, params.get("top_k"),
                                                params.get("scores"), named.pinned))

    async def _decode_image(self, request: Request, body: bytes,
                            meta: ModelMetadata) -> RequestInputs:
        return _images_only(meta, [body])

    async def _decode_json(self, request: Request, body: bytes,
                           meta: ModelMetadata) -> RequestInputs:
        """``{"instances": [...]}``: TF Serving's row format."""
        document = await parse_json_body(body, self._plane.budget)
        if not isinstance(document, dict) or "instances" not in document:
            raise BadRequest('expected a JSON object with an "instances" list')
        parsed = await off_loop(
            lambda: json_inputs(rows_by_input(document["instances"], meta,
                                              self._limits.max_rows), meta, '"instances"'))
        return with_images(meta, parsed)

    async def _decode_multipart(self, request: Request, body: bytes,
                                meta: ModelMetadata) -> RequestInputs:
        """Every file part of a form, in order, as one image batch."""

        async def replay() -> dict[str, Any]:  # the body was already read within limits
            return {"type": "http.request", "body": body, "more_body": False}

        max_rows = self._limits.max_rows
        try:
            form = await Request(request.scope, replay).form(max_files=max_rows + 1)
        except Exception as exc:  # Starlette raises its own error types for bad multipart
            raise BadRequest(f"malformed multipart body: {exc}") from exc
        try:
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if len(files) > max_rows:
                raise PayloadTooLarge(f"more than {max_rows} files in one request")
            blobs = [await f.read() for f in files]
        finally:
            await form.close()
        return _images_only(meta, blobs)


def _images_only(meta: ModelMetadata, blobs: list[bytes]) -> RequestInputs:
    """Uploaded images as the model's inputs: a model that takes other inputs
    besides the images needs them in JSON."""
    spec = meta.image_spec()
    if len(meta.inputs) > 1:
        raise BadRequest(f"model {meta.name!r} takes {meta.describe_inputs()}: send every "
                         'input in JSON ({"instances": [...]}), images as {"b64": ...}')
    return {spec.name: EncodedImages(blobs)}
