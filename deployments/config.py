"""The typed arguments of the application: the ``args:`` block of the YAML.

This is the one place where configuration meets code; everything downstream
receives plain, validated values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from deployments.device import GpuMemoryMode


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputLimits(_Strict):
    """Bounds on what one request may carry (beyond them a 413) and on what an
    ingress replica takes on at once (past them a 503)."""

    max_body_bytes: int = Field(16 * 2**20, gt=0)
    max_image_pixels: int = Field(4096 * 4096, gt=0)
    max_rows: int = Field(256, gt=0, description="images or instances per request")
    max_elements: int = Field(2**26, gt=0, description="numbers per request once decoded")
    max_decoded_bytes: int = Field(
        512 * 2**20, gt=0, description="what one request's images may allocate while they "
                                       "decode, counted from their headers before any is")
    max_inflight_bytes: int = Field(
        2**30, gt=0, description="what one ingress replica holds for all requests in flight "
                                 "(bodies, parsed JSON, decoded batches); beyond: a 503")
    request_timeout_s: float = Field(
        30.0, gt=0, description="how long a request may wait for its model before a 503; "
                                "a client's x-request-timeout-seconds header may shorten it")
    decode_threads: int = Field(
        2, gt=0, le=64, description="images decoded at once by one ingress replica: bounds "
                                    "the memory decoding takes, whatever the concurrency")


class DeviceArgs(_Strict):
    """How a model replica uses its hardware (see ``deployments.device``)."""

    gpu_memory: GpuMemoryMode = "growth"
    gpu_total_memory_mb: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _limit_needs_total(self) -> DeviceArgs:
        if self.gpu_memory == "limit" and self.gpu_total_memory_mb is None:
            raise ValueError('gpu_memory: "limit" needs gpu_total_memory_mb')
        return self


InputKind = Literal["image", "tensor"]

# Deployment names in the app besides one per model.
RESERVED_NAMES = frozenset({"Preprocessor"})


class ModelArgs(_Strict):
    """One model to serve, in TF Serving's layout: ``path`` holds numbered
    version directories (``path/1``, ``path/2``), each a SavedModel; a
    SavedModel directory itself is served as version 1."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    path: Path = Field(description="model base directory (relative to where serve runs)")
    versions: tuple[PositiveInt, ...] | None = Field(
        None, min_length=1, description="versions to serve; default: the highest one present"
    )
    input: InputKind = Field(
        "tensor", description="image: encoded images are decoded to the image input"
    )
    image_input: str | None = Field(
        None, description="the input images go into; default: the one shaped like images")
    labels_path: Path | None = Field(None, description="one class label per line")
    signature_name: str = "serving_default"
    scores_output: str | None = Field(
        None, description="output holding class scores; default: the only or first output"
    )
    jit_compile: bool = Field(False, description="compile with XLA (batches padded to buckets)")
    ship: bool = Field(
        False, description="pack the served versions and labels into the object store; "
                           "replicas load a copy on their own node"
    )

    @model_validator(mode="after")
    def _shipped_labels_inside(self) -> ModelArgs:
        labels = self.labels_path
        if self.ship and labels and not labels.resolve().is_relative_to(self.path.resolve()):
            raise ValueError(f"ship: true packs what lies under path ({self.path}); "
                             f"labels_path {labels} lies outside it")
        return self

    def resolved(self) -> ModelArgs:
        """Paths made absolute and versions pinned, when the app is built:
        replicas may run in other directories, and all serve the same versions."""
        labels = self.labels_path.resolve() if self.labels_path else None
        absolute = self.model_copy(update={"path": self.path.resolve(), "labels_path": labels})
        dirs = absolute.version_dirs()
        if absolute.path in dirs.values():  # the path itself is (or fails as) the SavedModel
            return absolute
        return absolute.model_copy(update={"versions": tuple(dirs)})

    def shipped_files(self) -> list[Path]:
        """What ``ship: true`` packs: each served version and the labels file."""
        return [*self.version_dirs().values(), *filter(None, [self.labels_path])]

    def moved_to(self, base: Path) -> ModelArgs:
        """These (resolved) arguments with ``path`` moved to ``base``, as a
        replica sees a shipped model."""
        labels = self.labels_path and base / self.labels_path.relative_to(self.path)
        return self.model_copy(update={"path": base, "labels_path": labels})

    def version_dirs(self) -> dict[int, Path]:
        """Each served version's SavedModel directory, highest version last.

        A missing directory is still named here: the replica that fails to
        load it reports the path and the cause in ``serve status``.
        """
        if self.versions in (None, (1,)) and (self.path / "saved_model.pb").is_file():
            return {1: self.path}
        if self.versions:
            return {v: self.path / str(v) for v in sorted(self.versions)}
        found = sorted(int(d.name) for d in self.path.glob("[0-9]*")
                       if d.name.isdigit() and (d / "saved_model.pb").is_file())
        return {found[-1]: self.path / str(found[-1])} if found else {1: self.path}


class AppArgs(_Strict):
    models: tuple[ModelArgs, ...] = Field(min_length=1)
    top_k: int = Field(5, ge=1, description="default number of classes per prediction")
    limits: InputLimits = InputLimits()
    device: DeviceArgs = DeviceArgs()

    @model_validator(mode="after")
    def _unique_names(self) -> AppArgs:
        names = [m.name for m in self.models]
        taken = sorted({n for n in names if names.count(n) > 1 or n in RESERVED_NAMES})
        if taken:
            raise ValueError(f"model names must be unique and not {sorted(RESERVED_NAMES)}: "
                             f"{', '.join(taken)}")
        return self
