"""How a model's encoded images become its input values: the ``preprocessing``
block of a model in the YAML, and the numbers the image codec applies.

Every setting reduces to a resize policy, a channel order and one affine map
per output channel (``pixel * scale + offset``, the range, scale/offset and
mean/std folded together), so the codec makes a single pass over each row.
The defaults are what every image model got before this block existed:
RGB (or grayscale), stretched with a bilinear filter, scaled to [0, 1].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, Field, model_validator

from deployments.bounds import STRICT, Side
from deployments.types import ImageGeometry

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]
Pixel = Annotated[int, Field(ge=0, le=255)]

# ``tf.keras.applications.<family>.preprocess_input`` as settings, by its mode:
# "tf" scales to [-1, 1]; "caffe" flips RGB to BGR and subtracts the ImageNet
# mean (in BGR order) without scaling; "torch" scales to [0, 1] then
# normalises by the ImageNet mean and std; the rest take [0, 255] as they are
# (those models rescale inside their graph).
_TF: dict[str, Any] = {"range": (-1.0, 1.0)}
_CAFFE: dict[str, Any] = {"range": (0.0, 255.0), "channel_order": "BGR",
                          "mean": (103.939, 116.779, 123.68)}
_TORCH: dict[str, Any] = {"range": (0.0, 1.0), "mean": (0.485, 0.456, 0.406),
                          "std": (0.229, 0.224, 0.225)}
_RAW: dict[str, Any] = {"range": (0.0, 255.0)}
PRESETS: dict[str, dict[str, Any]] = {
    "keras_mobilenet": _TF, "keras_mobilenet_v2": _TF, "keras_inception_v3": _TF,
    "keras_inception_resnet_v2": _TF, "keras_xception": _TF, "keras_resnet_v2": _TF,
    "keras_nasnet": _TF,
    "keras_resnet50": _CAFFE, "keras_resnet": _CAFFE, "keras_vgg16": _CAFFE,
    "keras_vgg19": _CAFFE,
    "keras_densenet": _TORCH,
    "keras_efficientnet": _RAW, "keras_efficientnet_v2": _RAW, "keras_mobilenet_v3": _RAW,
    "keras_convnext": _RAW,
}
if TYPE_CHECKING:  # a Literal of the keys above, built at run time: mypy cannot read it
    Preset = str
else:
    Preset = Literal[tuple(PRESETS)]


def _per_channel(value: Any) -> Any:
    return (value,) if isinstance(value, int | float) else value


PerChannel = Annotated[tuple[float, ...], BeforeValidator(_per_channel),
                       Field(min_length=1, max_length=3)]


class ShorterSide(BaseModel):
    """Resize the shorter side to ``shorter_side`` keeping the aspect ratio,
    then take the model's height × width from the centre."""

    model_config = STRICT

    shorter_side: Side
    crop: Literal["center"] = "center"


class ImagePreprocessing(BaseModel):
    """A model's image preprocessing (docs/configuration.md, "Image preprocessing")."""

    model_config = STRICT

    preset: Preset | None = Field(
        None, description="a Keras application family's preprocess_input; fields given "
                          "beside it override it")
    range: tuple[float, float] | None = Field(
        None, description="[low, high] that pixel values 0 and 255 map to; default [0, 1]")
    scale: float | None = Field(None, description="instead of range: pixel * scale + offset")
    offset: float | None = None
    mean: PerChannel = Field((0.0,), description="subtracted after scaling, per output channel")
    std: PerChannel = Field((1.0,), description="divided by after the mean, per output channel")
    channel_order: Literal["RGB", "BGR"] = "RGB"
    resize: Literal["stretch", "letterbox"] | ShorterSide = Field(
        "stretch", description="stretch to height × width; letterbox: fit inside it keeping "
                               "the aspect ratio, padded; {shorter_side: N, crop: center}")
    pad_value: Pixel | tuple[Pixel, Pixel, Pixel] = Field(
        0, description="letterbox padding, a pixel value (0-255) or an RGB triple")
    interpolation: Interpolation = "bilinear"
    alpha: Literal["drop", "white", "black"] = Field(
        "drop", description="transparent images: drop the alpha channel, or composite "
                            "them on white or black")
    exif_transpose: bool = Field(True, description="turn photos upright by their EXIF "
                                                   "orientation")

    @model_validator(mode="before")
    @classmethod
    def _preset_under_fields(cls, data: Any) -> Any:
        """A preset's settings, under whatever is given explicitly."""
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            preset = PRESETS[data["preset"]]
            if data.get("scale") is not None:  # it replaces the preset's range
                preset = {k: v for k, v in preset.items() if k != "range"}
            return {**preset, **data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ImagePreprocessing:
        if self.range is not None and (self.scale is not None or self.offset is not None):
            raise ValueError("give range or scale/offset, not both")
        if self.offset is not None and self.scale is None:
            raise ValueError("offset needs scale (pixel * scale + offset)")
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError(f"range [{self.range[0]}, {self.range[1]}]: low must be below high")
        if self.scale == 0:
            raise ValueError("scale 0 would make every image the same")
        if min(self.std) <= 0:
            raise ValueError(f"std {list(self.std)}: every value must be above 0")
        if self.pad_value not in (0, (0, 0, 0)) and self.resize != "letterbox":
            raise ValueError("pad_value is for resize: letterbox")
        self._fits_float32()
        return self

    def _fits_float32(self) -> None:
        """Every pixel value maps to a finite float32 (each field finite may
        still overflow: ``range: [-1e300, 1e300]``, ``std: 1e-300``)."""
        channels = max(len(self.mean), len(self.std))
        if {len(self.mean), len(self.std)} - {1, channels}:
            return  # refused by ``check`` once the model's channels are known
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            scale, offset = self.affine(channels)
            ends = np.stack([offset, np.float32(255) * scale + offset])
        if not np.isfinite(ends).all():
            raise ValueError("range, scale, offset, mean and std map pixel values beyond "
                             "float32's range")

    def check(self, geometry: ImageGeometry) -> None:
        """A ValueError unless these settings fit images of ``geometry`` (known
        once the model is loaded)."""
        channels = geometry.channels
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, channels):
                raise ValueError(f"preprocessing {name} has {len(values)} values; the model's "
                                 f"images have {channels} channel{'s' * (channels > 1)}")
        if channels == 1 and self.channel_order == "BGR":
            raise ValueError("preprocessing channel_order: BGR needs a 3-channel image input; "
                             "the model's images are grayscale")
        if channels == 1 and isinstance(self.pad_value, tuple):
            raise ValueError("preprocessing: an RGB pad_value needs a 3-channel image input; "
                             "the model's images are grayscale")
        side = max(geometry.height, geometry.width)
        if isinstance(self.resize, ShorterSide) and self.resize.shorter_side < side:
            raise ValueError(f"preprocessing resize: shorter_side {self.resize.shorter_side} "
                             f"is below the model's {geometry.height}x{geometry.width}: the "
                             f"centre crop needs at least {side}")

    def affine(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scale, offset)``, float32 ``[channels]``: a pixel value ``p``
        (0-255) of output channel ``c`` becomes ``p * scale[c] + offset[c]``."""
        if self.scale is not None:
            scale, offset = self.scale, self.offset or 0.0
        else:
            low, high = self.range or (0.0, 1.0)
            scale, offset = (high - low) / 255, low
        mean = np.broadcast_to(np.asarray(self.mean, np.float64), channels)
        std = np.broadcast_to(np.asarray(self.std, np.float64), channels)
        return (scale / std).astype(np.float32), ((offset - mean) / std).astype(np.float32)

    @property
    def composites_alpha(self) -> bool:
        return self.alpha != "drop"


DEFAULT = ImagePreprocessing()
