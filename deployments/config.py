"""The typed arguments of the application: the ``args:`` block of the YAML.

This is the one place where configuration meets code; everything downstream
receives plain, validated values.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.device import GpuMemoryMode


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputLimits(_Strict):
    """Bounds on what one request may carry; beyond them a 413."""

    max_body_bytes: int = Field(16 * 2**20, gt=0)
    max_image_pixels: int = Field(4096 * 4096, gt=0)
    max_rows: int = Field(256, gt=0, description="images or instances per request")


class DeviceArgs(_Strict):
    """How a model replica uses its hardware (see ``deployments.device``)."""

    gpu_memory: GpuMemoryMode = "growth"
    gpu_total_memory_mb: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _limit_needs_total(self) -> DeviceArgs:
        if self.gpu_memory == "limit" and self.gpu_total_memory_mb is None:
            raise ValueError('gpu_memory: "limit" needs gpu_total_memory_mb')
        return self


class ModelArgs(_Strict):
    """One SavedModel to serve."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    path: Path = Field(description="SavedModel directory (relative to where serve runs)")
    labels_path: Path | None = Field(None, description="one class label per line")
    signature_name: str = "serving_default"
    scores_output: str | None = Field(
        None, description="output holding class scores; default: the only or first output"
    )
    jit_compile: bool = Field(False, description="compile with XLA (batches padded to buckets)")

    def resolved(self) -> ModelArgs:
        """Paths made absolute here, since replicas may run in other directories."""
        labels = self.labels_path.resolve() if self.labels_path else None
        return self.model_copy(update={"path": self.path.resolve(), "labels_path": labels})


class AppArgs(_Strict):
    model: ModelArgs
    top_k: int = Field(5, ge=1, description="default number of classes per prediction")
    limits: InputLimits = InputLimits()
    device: DeviceArgs = DeviceArgs()
