"""The peer server: the benchmark SavedModel behind KServe's Python
ModelServer (V2 protocol). Runs in its own venv (kserve + tensorflow), made by
``benchmarks/kserve_peer.py``; imports nothing of this project."""

from __future__ import annotations

import argparse

import tensorflow as tf
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class SavedModel(Model):
    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self._model_dir = model_dir
        self._fn = None
        self.load()

    def load(self) -> bool:
        self._fn = tf.saved_model.load(self._model_dir).signatures["serving_default"]
        self.ready = True
        return True

    def __getstate__(self) -> dict:
        # KServe spawns its worker processes with the model pickled: each
        # worker loads its own copy of the SavedModel on first use.
        return {**self.__dict__, "_fn": None}

    async def predict(self, payload: InferRequest, headers: dict | None = None,
                      response_headers: dict | None = None) -> InferResponse:
        if self._fn is None:
            self.load()
        batch = payload.inputs[0].as_numpy()
        scores = self._fn(image=tf.constant(batch))["probabilities"].numpy()
        output = InferOutput("probabilities", list(scores.shape), "FP32")
        output.set_data_from_numpy(scores, binary_data=payload.use_binary_outputs)
        return InferResponse(payload.id or "", self.name, [output],
                             use_binary_outputs=payload.use_binary_outputs,
                             requested_outputs=payload.request_outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--name", default="mobilenet_v2")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    model = SavedModel(args.name, args.model_dir)
    ModelServer(http_port=args.port, workers=args.workers, enable_grpc=False,
                enable_latency_logging=False).start([model])


if __name__ == "__main__":
    main()
