"""TF Serving's generated protobuf modules (``tensorflow-serving-api``),
imported without importing TensorFlow.

Those modules import ``tensorflow.core.framework.tensor_pb2`` and the like,
and importing any ``tensorflow.*`` module runs ``tensorflow/__init__.py``: all
of TensorFlow, some 3 s and 600 MB in the ingress and in Serve's gRPC proxy,
which never run a model. While they are imported, a finder here answers for
``tensorflow`` and its sub-packages with empty packages over the installed
directories, so only the ``*_pb2`` files load; the empty packages are dropped
again afterwards (the ``_pb2`` modules stay), and a later ``import
tensorflow`` runs as usual and uses those same modules. Where TensorFlow is
already imported (a model replica, the in-process tests) this does nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

_TF = "tensorflow"


class _PackagesOnly:
    """A meta path finder: ``tensorflow`` packages as empty packages over
    their directories; ``*_pb2`` modules are left to the usual finders."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[str] = []

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if (name != _TF and not name.startswith(_TF + ".")) or name.endswith("_pb2"):
            return None
        spec = ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(self.root.joinpath(*name.split(".")[1:]))]
        self.made.append(name)
        return spec


@contextmanager
def _without_tensorflow_init() -> Iterator[None]:
    if _TF in sys.modules:
        yield
        return
    spec = importlib.util.find_spec(_TF)  # finds the directory, runs nothing
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("tensorflow-serving-api's protos need the tensorflow package")
    finder = _PackagesOnly(Path(next(iter(spec.submodule_search_locations))))
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in finder.made:
            sys.modules.pop(name, None)


with _without_tensorflow_init():
    from tensorflow.core.example import example_pb2
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        inference_pb2,
        input_pb2,
        model_management_pb2,
        model_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_log_pb2,
        prediction_service_pb2_grpc,
        regression_pb2,
    )

__all__ = [
    "classification_pb2", "error_codes_pb2", "example_pb2", "get_model_metadata_pb2",
    "get_model_status_pb2", "inference_pb2", "input_pb2", "meta_graph_pb2",
    "model_management_pb2", "model_pb2",
    "model_service_pb2_grpc", "predict_pb2", "prediction_log_pb2", "prediction_service_pb2_grpc",
    "regression_pb2",
    "tensor_pb2", "tensor_shape_pb2", "types_pb2",
]
