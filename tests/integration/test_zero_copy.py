"""The array a model replica gets from the object store is a read-only view of
shared memory, and the replica hands that same buffer to TensorFlow."""

from __future__ import annotations

import numpy as np
import ray
from ray import cloudpickle, serve

import tests.integration.test_zero_copy as this_module
from deployments.config import DeviceArgs, ModelArgs
from deployments.local import in_object_store
from deployments.model import ModelDeployment
from tests.integration.conftest import ROOT

# Replicas cannot import the tests package; ship this module's classes by value.
cloudpickle.register_pickle_by_value(this_module)


class InputProbe(ModelDeployment.func_or_class):
    """The real model deployment, recording what reaches TensorFlow."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict | None = None
        (served,) = self._versions.values()
        run = served.runner.run

        def recording_run(batch: np.ndarray):
            self.seen = {
                "address": batch.ctypes.data,
                "writeable": bool(batch.flags.writeable),
                "in_object_store": in_object_store(batch.ctypes.data),
            }
            return run(batch)

        served.runner.run = recording_run

    async def received(self, batch: np.ndarray) -> dict:
        view = {"address": batch.ctypes.data, "writeable": bool(batch.flags.writeable)}
        await self(batch)
        return {"received": view, "tensorflow": self.seen}


def test_model_replica_reads_the_object_store_buffer_without_copying(cluster_address):
    model = ModelArgs(name="digits", path=ROOT / "models" / "digits",
                      labels_path=ROOT / "models" / "digits" / "labels.txt")
    probe = serve.deployment(InputProbe, name="Probe").bind(
        model, DeviceArgs())
    handle = serve.run(probe, name="zero-copy-probe", route_prefix=None)
    try:
        # 32 rows fill the largest batch bucket, so no padding copy is due.
        ref = ray.put(np.random.default_rng(0).random((32, 28, 28, 1), dtype=np.float32))
        result = handle.received.remote(ref).result()
    finally:
        serve.delete("zero-copy-probe")
    received, tensorflow = result["received"], result["tensorflow"]
    assert received["writeable"] is False
    assert tensorflow["in_object_store"] is True
    assert tensorflow["address"] == received["address"]
    assert tensorflow["writeable"] is False
