"""The bar: the simplest fast server a user could write instead of ours. One
Serve deployment, ``@serve.batch`` (16 requests, 10 ms), one replica taking a
raw float32 body (no image decoding, no second deployment), with the same
Serve switches as ours. The benchmark runs it beside this server."""

from __future__ import annotations

import numpy as np
from ray import serve
from starlette.requests import Request


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 1})
class HandBuiltPeer:
    def __init__(self, model_dir: str, shape: tuple[int, ...]) -> None:
        import tensorflow as tf

        self._tf = tf
        self._shape = shape
        self._predict = tf.saved_model.load(model_dir).signatures["serving_default"]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batch(self, images: list[np.ndarray]) -> list[list[float]]:
        scores = self._predict(image=self._tf.constant(np.stack(images)))["probabilities"]
        return scores.numpy().tolist()

    async def __call__(self, request: Request) -> dict:
        image = np.frombuffer(await request.body(), dtype=np.float32).reshape(self._shape)
        return {"predictions": [await self._batch(image)]}
