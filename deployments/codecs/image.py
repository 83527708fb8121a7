"""Encoded images (PNG, JPEG, anything Pillow reads) → float32 model input.

Each image is turned upright by its EXIF orientation, converted to the
model's mode (grayscale or RGB), resized to its height × width by the model's
resize policy and mapped to values by its preprocessing (by default: stretched
with a bilinear filter, scaled to [0, 1]; see ``deployments.preprocessing``).
A batch is allocated once and every image is written straight into its row.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence

import numpy as np
import simplejpeg
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from deployments.errors import BadRequest, PayloadTooLarge, ServeError
from deployments.preprocessing import DEFAULT, ImagePreprocessing, ShorterSide
from deployments.types import ImageGeometry

# Raster formats a client may send. Limiting Pillow to these keeps requests
# away from its other plugins (EPS would start Ghostscript, for one).
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
# 16- and 32-bit grayscale modes, which Pillow's convert("L") would clip at 255.
_WIDE_GRAYSCALE = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
            "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}
# EXIF orientations that turn the image a quarter: width and height swap.
_QUARTER_TURNS = (5, 6, 7, 8)


def decode_images(blobs: Sequence[bytes], geometry: ImageGeometry, max_pixels: int,
                  max_decoded_bytes: int,
                  preprocessing: ImagePreprocessing = DEFAULT) -> np.ndarray:
    """Decode encoded images into one ``float32[N, H, W, C]`` batch.

    Every image's header is read first: each is checked against
    ``max_pixels``, and what all of them would allocate on the way to the
    model's input (:func:`decoded_bytes`) against ``max_decoded_bytes``,
    before any is decoded. A small file cannot stand for a huge decode.
    """
    if not blobs:
        raise BadRequest("no images in the request")
    many = len(blobs) > 1
    images = [_open(blob, geometry, preprocessing, max_pixels, f" (image {i})" if many else "")
              for i, blob in enumerate(blobs)]
    cost = sum(decoded_bytes(image, geometry, preprocessing) for image in images)
    if cost > max_decoded_bytes:
        raise PayloadTooLarge(
            f"the request's {len(images)} image{'s' * many} would decode to {cost} bytes, "
            f"the limit is {max_decoded_bytes}")
    batch = np.empty((len(blobs), geometry.height, geometry.width, geometry.channels),
                     dtype=np.float32)
    values = _values(preprocessing, geometry)
    for i, image in enumerate(images):
        pixels = _decode(image, blobs[i], geometry, preprocessing,
                         f" (image {i})" if many else "")
        values.place(pixels, batch[i])
    return batch


@functools.lru_cache(maxsize=64)
def _values(preprocessing: ImagePreprocessing, geometry: ImageGeometry) -> _Values:
    """One per model's preprocessing and input size, not per request (~20 µs
    of Python each)."""
    return _Values(preprocessing, geometry)


class _Values:
    """Pixels (uint8) → the model's values, written into a batch row."""

    def __init__(self, preprocessing: ImagePreprocessing, geometry: ImageGeometry) -> None:
        scale, offset = preprocessing.affine(geometry.channels)
        # Adding a zero offset is skipped only where it changes nothing (it
        # turns the -0.0 a negative scale makes of a 0 pixel into +0.0).
        self._scale = None if (scale == 1).all() else _row_of(scale, geometry.width)
        self._offset = (None if (offset == 0).all() and (scale >= 0).all()
                        else _row_of(offset, geometry.width))
        self._bgr = preprocessing.channel_order == "BGR"
        self._pad = np.array(preprocessing.pad_value, np.uint8).reshape(1, 1, -1)

    def place(self, pixels: np.ndarray, row: np.ndarray) -> None:
        """``pixels`` (``[h, w, C]``) in the middle of ``row`` (``[H, W, C]``),
        the margins around a smaller (letterboxed) image filled with the pad."""
        height, width = pixels.shape[:2]
        if (height, width) != row.shape[:2]:
            self._write(self._pad, row)
            top, left = (row.shape[0] - height) // 2, (row.shape[1] - width) // 2
            row = row[top:top + height, left:left + width]
        self._write(pixels, row)

    def _write(self, pixels: np.ndarray, out: np.ndarray) -> None:
        """One cast into ``out``, then the affine on its rows as flat runs of
        width × channels values: a ``[C]`` vector broadcast over ``[H, W, C]``
        makes NumPy loop 3 values at a time (7× slower on a 224² image)."""
        if self._bgr:
            pixels = pixels[..., ::-1]  # a view: no copy
        np.copyto(out, pixels)  # uint8 → float32, exact
        height, width, channels = out.shape
        # A row's pixels are contiguous, even in a letterbox's window (a view,
        # never a copy: copy=False raises rather than copy).
        rows = np.reshape(out, (height, width * channels), copy=False)
        if self._scale is not None:
            np.multiply(rows, self._scale[:width * channels], out=rows)
        if self._offset is not None:
            np.add(rows, self._offset[:width * channels], out=rows)


def _row_of(values: np.ndarray, width: int) -> np.ndarray:
    """Per-channel ``values`` repeated over a row of ``width`` pixels (a
    narrower, letterboxed window's row is a prefix of it); read-only, as
    every request's decode shares it."""
    row = np.tile(values, width)
    row.flags.writeable = False
    return row


def decoded_bytes(image: Image.Image, geometry: ImageGeometry,
                  preprocessing: ImagePreprocessing = DEFAULT) -> int:
    """What decoding ``image`` allocates (after JPEG's reduced-scale draft):
    its pixels as Pillow holds them in their own mode, once more for a
    conversion of the samples, and again in the model's mode; compositing
    transparency adds an RGBA copy and the background it is composited on.
    A shorter side resized whole before its crop adds that image; other
    resizes are at most the model's height × width, counted with the batch."""
    width, height = image.size
    native = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    model = 1 if geometry.channels == 1 else 4  # Pillow holds RGB in 4 bytes a pixel
    alpha = 4 + model if preprocessing.composites_alpha and image.has_transparency_data else 0
    resized = 0
    if isinstance(preprocessing.resize, ShorterSide):
        size = geometry.width, geometry.height
        (w, h), _ = _shorter_side(width, height, size, preprocessing.resize.shorter_side)
        resized = w * h * model if _resized_whole((w, h), size) else 0
    return width * height * (2 * native + model + alpha) + resized


def _open(blob: bytes, geometry: ImageGeometry, preprocessing: ImagePreprocessing,
          max_pixels: int, where: str) -> Image.Image:
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
        # JPEG can decode at a reduced scale, far cheaper for large photos
        # (other formats have no draft, and reading their EXIF may load them).
        if image.format == "JPEG":
            image.draft(geometry.pillow_mode, _draft_size(image, geometry, preprocessing))
    except Exception as exc:
        raise BadRequest(f"cannot decode image{where}: invalid header ({exc})") from None
    return image


def _draft_size(image: Image.Image, geometry: ImageGeometry,
                preprocessing: ImagePreprocessing) -> tuple[int, int]:
    """The least size (as stored, before any EXIF turn) the image may be
    reduced to: what the resize policy scales the whole upright image to."""
    turned = (preprocessing.exif_transpose
              and image.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS)
    width, height = image.size[::-1] if turned else image.size
    policy = preprocessing.resize
    if policy == "stretch":
        needed = geometry.width, geometry.height
    else:
        factor = (policy.shorter_side / min(width, height) if isinstance(policy, ShorterSide)
                  else min(geometry.width / width, geometry.height / height))
        needed = max(1, math.ceil(width * factor)), max(1, math.ceil(height * factor))
    return needed[::-1] if turned else needed


def _decode(image: Image.Image, blob: bytes, geometry: ImageGeometry,
            preprocessing: ImagePreprocessing, where: str) -> np.ndarray:
    try:
        pixels = _jpeg_pixels(image, blob, geometry, preprocessing)
        return pixels if pixels is not None else _pixels(image, geometry, preprocessing, where)
    except ServeError:
        raise
    except Exception as exc:
        raise BadRequest(
            f"cannot decode image{where}: the data is truncated or corrupt ({exc})"
        ) from None


# The modes Pillow decodes a JPEG to: the colour spaces it may be stored in, and
# what libjpeg-turbo is asked for (simplejpeg's names). Grayscale from a colour
# JPEG is its luma, which Pillow's draft has libjpeg-turbo output too.
_JPEG_OUTPUTS = {"RGB": (("YCbCr",), "RGB"), "L": (("YCbCr", "Gray"), "GRAY")}


def _jpeg_pixels(image: Image.Image, blob: bytes, geometry: ImageGeometry,
                 preprocessing: ImagePreprocessing) -> np.ndarray | None:
    """A plain JPEG's pixels decoded by libjpeg-turbo straight into an array
    (simplejpeg), as ``_pixels`` would give them; ``None`` for any other image.

    Pillow runs the same libjpeg-turbo decode, but its Python around it (the
    file read in chunks, 4-byte pixels, the copy into an array) costs ~4× the
    decode's CPU on a 224x224 photo. Plain means: in the model's mode already
    (RGB from a YCbCr JPEG, L from either), not reduced by the draft,
    not turned by its EXIF orientation, and decoded without a single libjpeg
    warning (``strict``): anything else, a truncated file included, is left to
    Pillow, so the answer and every error stay exactly Pillow's."""
    if (image.format != "JPEG" or image.mode not in _JPEG_OUTPUTS
            or image.mode != geometry.pillow_mode):
        return None
    stored_as, output = _JPEG_OUTPUTS[image.mode]
    if preprocessing.exif_transpose and image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        return None
    try:
        height, width, stored, _ = simplejpeg.decode_jpeg_header(blob)
        if stored not in stored_as or (width, height) != image.size:  # (reduced by the draft)
            return None
        pixels = simplejpeg.decode_jpeg(blob, colorspace=output)
    except Exception:  # whatever it is, Pillow's decode has the say
        return None
    if image.size != (geometry.width, geometry.height) or isinstance(preprocessing.resize,
                                                                     ShorterSide):
        return _resized(Image.fromarray(pixels[..., 0] if output == "GRAY" else pixels),
                        geometry, preprocessing)
    return pixels.reshape(*pixels.shape[:2], geometry.channels)


def _pixels(image: Image.Image, geometry: ImageGeometry, preprocessing: ImagePreprocessing,
            where: str) -> np.ndarray:
    """The image's one frame as uint8 ``[h, w, C]`` in the model's mode, resized
    by the policy (the model's size, or within it when letterboxed)."""
    frames = getattr(image, "n_frames", 1)  # multi-frame formats read the whole file
    if frames > 1:  # which frame would the model see? the client must choose
        raise BadRequest(f"image{where} is animated ({frames} frames): send a single frame")
    if preprocessing.exif_transpose:
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of the pixels
    image.load()
    if image.mode in _WIDE_GRAYSCALE:
        image = _to_8_bit(image)
    mode = geometry.pillow_mode
    if preprocessing.composites_alpha and image.has_transparency_data:
        image = _composite(image, mode, preprocessing.alpha)
    try:
        if image.mode != mode:
            image = image.convert(mode)
    except ValueError:
        raise BadRequest(
            f"image{where} has pixel mode {image.mode}, which cannot be converted to {mode}"
        ) from None
    return _resized(image, geometry, preprocessing)


def _resized(image: Image.Image, geometry: ImageGeometry,
             preprocessing: ImagePreprocessing) -> np.ndarray:
    """``image`` (in the model's mode) resized by the policy, as uint8 ``[h, w, C]``."""
    pixels = np.asarray(_resize(image, geometry, preprocessing), dtype=np.uint8)
    return pixels.reshape(*pixels.shape[:2], geometry.channels)


def _composite(image: Image.Image, mode: str, background: str) -> Image.Image:
    """The image over a plain ``background`` ("white", "black"), in ``mode``."""
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    out = Image.new(mode, image.size, background)
    out.paste(rgba, mask=rgba)  # blended by the alpha band
    return out


# shorter_side: resized images up to this many times the crop's area are
# resized whole, then cropped (as torchvision does, to the bit).
_MAX_RESIZED_AREA = 4


def _resize(image: Image.Image, geometry: ImageGeometry,
            preprocessing: ImagePreprocessing) -> Image.Image:
    """The image at the model's size (stretched, or the centre of the image
    scaled to its shorter side), or fitted within it (letterbox)."""
    width, height = image.size
    size = geometry.width, geometry.height
    policy, method = preprocessing.resize, _FILTERS[preprocessing.interpolation]
    if isinstance(policy, ShorterSide):
        resized, crop = _shorter_side(width, height, size, policy.shorter_side)
        if _resized_whole(resized, size):
            return image.resize(resized, method).crop(crop)
        # An image of extreme aspect never allocates its whole resized self:
        # only the crop is resampled, from the same box in source pixels
        # (the same points at the same scale, but for Pillow's float32 box).
        scale_x, scale_y = width / resized[0], height / resized[1]
        box = (crop[0] * scale_x, crop[1] * scale_y, crop[2] * scale_x, crop[3] * scale_y)
        return image.resize(size, method, box=box)
    if policy == "letterbox":
        size = _fit(width, height, *size)
    return image if image.size == size else image.resize(size, method)


def _shorter_side(width: int, height: int, size: tuple[int, int], side: int
                  ) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """As torchvision's ``Resize(side)`` then ``CenterCrop(size)``: the size
    the image is resized to (the shorter side ``side``, the longer truncated to
    an integer) and the crop box in it (at the rounded integer offset)."""
    resized = ((side, int(side * height / width)) if width <= height
               else (int(side * width / height), side))
    left, top = (round((r - s) / 2) for r, s in zip(resized, size, strict=True))
    return resized, (left, top, left + size[0], top + size[1])


def _resized_whole(resized: tuple[int, int], size: tuple[int, int]) -> bool:
    return resized[0] * resized[1] <= _MAX_RESIZED_AREA * size[0] * size[1]


def _fit(width: int, height: int, max_width: int, max_height: int) -> tuple[int, int]:
    """The largest size of the image's aspect within ``max_width × max_height``."""
    if width * max_height <= height * max_width:  # height bounds it
        return max(1, round(width * max_height / height)), max_height
    return max_width, max(1, round(height * max_width / width))


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit grayscale scaled to 8 bits (the top byte of each sample), without
    widening the samples (32-bit "I" images are clipped to 16 bits first)."""
    samples = np.asarray(image)
    if samples.dtype.itemsize > 2:
        samples = np.clip(samples, 0, 65535)
    return Image.fromarray((samples >> 8).astype(np.uint8), mode="L")
