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


def decode_images(blobs: Sequence[bytes], geometry: ImageGeometry, max_pixels: int,
                  max_decoded_bytes: int) -> np.ndarray:
    """Decode encoded images into one ``float32[N, H, W, C]`` batch.

    Every image's header is read first: each is checked against
    ``max_pixels``, and what all of them would allocate on the way to the
    model's input (:func:`decoded_bytes`) against ``max_decoded_bytes``,
    before any is decoded. A small file cannot stand for a huge decode.
    """
    if not blobs:
        raise BadRequest("no images in the request")
    many = len(blobs) > 1
    images = [_open(blob, geometry, max_pixels, f" (image {i})" if many else "")
              for i, blob in enumerate(blobs)]
    cost = sum(decoded_bytes(image, geometry) for image in images)
    if cost > max_decoded_bytes:
        raise PayloadTooLarge(
            f"the request's {len(images)} image{'s' * many} would decode to {cost} bytes, "
            f"the limit is {max_decoded_bytes}")
    batch = np.empty((len(blobs), geometry.height, geometry.width, geometry.channels),
                     dtype=np.float32)
    for i, image in enumerate(images):
        pixels = _decode(image, geometry, f" (image {i})" if many else "")
        # One write per image: uint8 pixels scaled straight into the batch row.
        np.multiply(pixels.reshape(batch.shape[1:]), np.float32(1 / 255), out=batch[i])
    return batch


def decoded_bytes(image: Image.Image, geometry: ImageGeometry) -> int:
    """What decoding ``image`` allocates (after JPEG's reduced-scale draft):
    its pixels as Pillow holds them in their own mode, once more for a
    conversion of the samples, and again in the model's mode."""
    width, height = image.size
    native = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    model = 1 if geometry.channels == 1 else 4  # Pillow holds RGB in 4 bytes a pixel
    return width * height * (2 * native + model)


def _open(blob: bytes, geometry: ImageGeometry, max_pixels: int, where: str) -> Image.Image:
    """The image's header read, its size checked, a reduced scale chosen."""
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
        # JPEG can decode at a reduced scale, far cheaper for large photos.
        image.draft(geometry.pillow_mode, (geometry.width, geometry.height))
    except Exception as exc:
        raise BadRequest(f"cannot decode image{where}: invalid header ({exc})") from None
    return image


def _decode(image: Image.Image, geometry: ImageGeometry, where: str) -> np.ndarray:
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
    ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of the pixels
    image.load()
    if image.mode in _WIDE_GRAYSCALE:
        image = _to_8_bit(image)
    try:
        if image.mode != geometry.pillow_mode:
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
    """16-bit grayscale scaled to 8 bits (the top byte of each sample), without
    widening the samples (32-bit "I" images are clipped to 16 bits first)."""
    samples = np.asarray(image)
    if samples.dtype.itemsize > 2:
        samples = np.clip(samples, 0, 65535)
    return Image.fromarray((samples >> 8).astype(np.uint8), mode="L")
