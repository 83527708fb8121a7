"""The naive baseline: one plain Ray Serve deployment, as a user writes it in
an afternoon. It takes a JSON list, builds a tensor and predicts: no batching,
no object store, Serve's defaults for everything but the replica count."""

from __future__ import annotations

import numpy as np
from ray import serve
from starlette.requests import Request


@serve.deployment(ray_actor_options={"num_cpus": 1})
class NaiveModel:
    def __init__(self, model_dir: str) -> None:
        import tensorflow as tf

        self._tf = tf
        self._predict = tf.saved_model.load(model_dir).signatures["serving_default"]

    async def __call__(self, request: Request) -> dict:
        instances = (await request.json())["instances"]
        batch = self._tf.constant(np.asarray(instances, dtype=np.float32))
        return {"predictions": self._predict(image=batch)["probabilities"].numpy().tolist()}
