"""Encoded images (PNG, JPEG, anything Pillow reads) → float32 model input.

Each image is converted to the model's mode (grayscale or RGB), resized to its
height × width with a bilinear filter and scaled to [0, 1]. A batch is
allocated once and every image is written straight into its row.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deployments.codecs.errors import BadRequest, PayloadTooLarge, ServeError
from deployments.signature import ImageGeometry

# Raster formats a client may send. Limiting Pillow to these keeps requests
# away from its other plugins (EPS would start Ghostscript, for one).
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
# 16- and 32-bit grayscale modes, which Pillow's convert("L") would clip at 255.
_WIDE_GRAYSCALE = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_images(
    blobs: Sequence[bytes], geometry: ImageGeometry, max_pixels: int
) -> np.ndarray:
    """Decode encoded images into one ``float32[N, H, W, C]`` batch."""
    if not blobs:
        raise BadRequest("no images in the request")
    batch = np.empty((len(blobs), geometry.height, geometry.width, geometry.channels),
                     dtype=np.float32)
    for i, blob in enumerate(blobs):
        pixels = _decode_one(blob, geometry, max_pixels, index=i if len(blobs) > 1 else None)
        # One write per image: uint8 pixels scaled straight into the batch row.
        np.multiply(pixels.reshape(batch.shape[1:]), np.float32(1 / 255), out=batch[i])
    return batch


def _decode_one(
    blob: bytes, geometry: ImageGeometry, max_pixels: int, index: int | None
) -> np.ndarray:
    where = "" if index is None else f" (image {index})"
    if not blob:
        raise BadRequest(f"empty image{where}")
    # Pillow's plugins raise almost any exception type on malformed data
    # (IndexError, TypeError, KeyError, struct.error, ...): every one of them
    # means a bad image, never a server fault.
    try:
        image = Image.open(io.BytesIO(blob), formats=FORMATS)
    except UnidentifiedImageError:
        raise BadRequest(
            f"cannot decode image{where}: not one of the formats {', '.join(FORMATS)}"
        ) from None
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"image{where} has too many pixels") from None
    except Exception as exc:
        raise BadRequest(f"cannot decode image{where}: invalid header ({exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image{where} is {width}x{height} = {width * height} pixels, "
            f"the limit is {max_pixels}"
        )
    if width == 0 or height == 0:
        raise BadRequest(f"image{where} has no pixels")
    try:
        return _pixels(image, geometry, where)
    except ServeError:
        raise
    except Exception as exc:
        raise BadRequest(
            f"cannot decode image{where}: the data is truncated or corrupt ({exc})"
        ) from None


def _pixels(image: Image.Image, geometry: ImageGeometry, where: str) -> np.ndarray:
    """The image's one frame as uint8 ``[H, W, C]`` in the model's mode and size."""
    frames = getattr(image, "n_frames", 1)  # multi-frame formats read the whole file
    if frames > 1:  # which frame would the model see? the client must choose
        raise BadRequest(f"image{where} is animated ({frames} frames): send a single frame")
    # JPEG can decode at a reduced scale, far cheaper for large photos.
    image.draft(geometry.pillow_mode, (geometry.width, geometry.height))
    ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of the pixels
    image.load()
    if image.mode in _WIDE_GRAYSCALE:
        image = _to_8_bit(image)
    try:
        image = image.convert(geometry.pillow_mode)
    except ValueError:
        raise BadRequest(
            f"image{where} has pixel mode {image.mode}, which cannot be converted to "
            f"{geometry.pillow_mode}"
        ) from None
    if image.size != (geometry.width, geometry.height):
        image = image.resize((geometry.width, geometry.height), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit grayscale scaled to 8 bits (the top byte of each sample)."""
    samples = np.asarray(image).astype(np.int64, copy=False)
    return Image.fromarray((np.clip(samples, 0, 65535) >> 8).astype(np.uint8), mode="L")
