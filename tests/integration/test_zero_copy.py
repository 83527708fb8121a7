"""The array a model replica gets from the object store is a read-only view of
shared memory, and the replica hands that same buffer to TensorFlow; a Python
caller's own object is forwarded to the model replica, not put again."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from ray import cloudpickle, serve

import harness.probes
import tests.integration.test_zero_copy as this_module
from deployments.config import DeviceArgs, InputLimits, ModelArgs
from deployments.errors import BadRequest
from deployments.ingress.deployment import Preprocessor
from deployments.replica.deployment import ModelDeployment
from harness.probes import in_object_store
from tests.common import ROOT, signature_models

# Replicas cannot import the tests or the harness; ship what they run by value.
cloudpickle.register_pickle_by_value(this_module)
cloudpickle.register_pickle_by_value(harness.probes)


class InputProbe(ModelDeployment.func_or_class):
    """The real model deployment, recording what reaches TensorFlow."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict | None = None
        (served,) = self._versions.served.values()
        run = served.runner.run

        def recording_run(batch: dict[str, np.ndarray], signature: str | None = None):
            self.seen = {name: {"address": array.ctypes.data,
                                "writeable": bool(array.flags.writeable),
                                "in_object_store": in_object_store(array.ctypes.data)}
                         for name, array in batch.items()}
            return run(batch, signature)

        served.runner.run = recording_run

    async def received(self, inputs: dict[str, np.ndarray]) -> dict:
        views = {name: {"address": array.ctypes.data, "writeable": bool(array.flags.writeable)}
                 for name, array in inputs.items()}
        await self(inputs)
        return {"received": views, "tensorflow": self.seen}


@pytest.mark.parametrize("model", ["digits", "sequence"])
def test_model_replica_reads_the_object_store_buffers_without_copying(cluster_address, model):
    """One input (digits' images), or several (a sequence model's ids and mask):
    each reaches TensorFlow as the read-only view of the object store's buffer."""
    rng = np.random.default_rng(0)
    if model == "digits":
        args = ModelArgs(name=model, path=ROOT / "models" / "digits",
                         labels_path=ROOT / "models" / "digits" / "labels.txt")
        # 32 rows fill the largest batch bucket, so no padding copy is due.
        inputs = {"image": rng.random((32, 28, 28, 1), dtype=np.float32)}
    else:
        args = ModelArgs(name=model, path=signature_models() / "sequence")
        inputs = {"input_ids": rng.integers(0, 100, (32, 12), dtype=np.int32),
                  "attention_mask": np.ones((32, 12), np.int32)}
    probe = serve.deployment(InputProbe, name="Probe").bind(args, DeviceArgs())
    handle = serve.run(probe, name="zero-copy-probe", route_prefix=None)
    try:
        result = handle.received.remote(ray.put(inputs)).result()  # all inputs in one put
    finally:
        serve.delete("zero-copy-probe")
    received, tensorflow = result["received"], result["tensorflow"]
    assert set(received) == set(tensorflow) == set(inputs)
    for name in inputs:
        assert received[name]["writeable"] is False
        assert tensorflow[name]["in_object_store"] is True
        assert tensorflow[name]["address"] == received[name]["address"]
        assert tensorflow[name]["writeable"] is False


class ForwardProbe(ModelDeployment.func_or_class):
    """The real model deployment, recording which objects reach it by reference."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.forwarded: list[str] = []

    async def infer_parts(self, local, forwarded, version=None, isolated=False,
                          signature=None):
        self.forwarded += [ref.hex() for refs in forwarded for ref in refs.values()]
        return await super().infer_parts(local, forwarded, version, isolated, signature)

    def seen(self) -> list[str]:
        return self.forwarded


def test_a_callers_object_reaches_the_model_replica_as_the_same_object(cluster_address):
    model = ModelArgs(name="digits", path=ROOT / "models" / "digits", input="image",
                      labels_path=ROOT / "models" / "digits" / "labels.txt")
    probe = serve.deployment(ForwardProbe, name="digits").bind(model, DeviceArgs())
    app = Preprocessor.bind({"digits": probe}, 3, InputLimits())
    handle = serve.run(app, name="forward-probe", route_prefix=None)
    try:
        batch = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
        ref = ray.put(batch)
        by_name = handle.predict.remote({"image": ref}).result()
        resolved = handle.predict.remote(ref).result()  # Ray resolves a bare ref first
        # float64 must be cast: the cast copy is put instead of forwarding.
        cast = handle.predict.remote({"image": ray.put(batch.astype(np.float64))}).result()
        with pytest.raises(BadRequest, match="expected float32"):
            handle.predict.remote({"image": ray.put(np.zeros((2, 5), np.float32))}).result()
        seen = serve.get_deployment_handle("digits", "forward-probe").seen.remote().result()
        stats = handle.stats.remote().result()["models"]["digits"]
    finally:
        serve.delete("forward-probe", _blocking=False)  # (goes while the next test runs)
    assert seen == [ref.hex()]  # the caller's object itself, not a copy put again
    assert stats["forwarded"] == 1
    assert stats["versions"]["1"]["requests"] == 3
    assert by_name["predictions"] == resolved["predictions"]
    assert [p["top_k"][0]["label"] for p in cast["predictions"]] == \
        [p["top_k"][0]["label"] for p in by_name["predictions"]]
