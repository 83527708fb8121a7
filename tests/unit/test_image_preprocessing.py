"""The image codec under each preprocessing setting: exact pixels on small
synthetic images, resize policies on extreme aspect ratios, alpha, EXIF, and
JPEG's reduced-scale decoding kept large enough for the policy."""

import io

import numpy as np
import pytest
from PIL import Image

from deployments.codecs.image import decode_images, decoded_bytes
from deployments.errors import PayloadTooLarge
from deployments.preprocessing import ImagePreprocessing
from deployments.types import ImageGeometry

LIMIT, BUDGET = 10**8, 2**30
PIXELS = {"range": [0, 255]}  # values read as the 0-255 pixels they came from


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode(image: Image.Image | bytes, geometry: ImageGeometry, **fields: object) -> np.ndarray:
    blob = image if isinstance(image, bytes) else encode(image)
    return decode_images([blob], geometry, LIMIT, BUDGET,
                         ImagePreprocessing.model_validate(fields))[0]


def columns(values: list[int], height: int) -> Image.Image:
    return Image.fromarray(np.tile(np.array(values, np.uint8), (height, 1)))


def test_shorter_side_then_center_crop_exact_pixels():
    gray = ImageGeometry(2, 2, 1)
    # 8x4 columns 0, 10, .., 70 → shorter side 2 halves it; the centre 2x2 of
    # the 4x2 result averages source columns 2-3 and 4-5.
    landscape = decode(columns([0, 10, 20, 30, 40, 50, 60, 70], 4), gray,
                       resize={"shorter_side": 2}, interpolation="box", **PIXELS)
    assert landscape[..., 0].tolist() == [[25, 45], [25, 45]]
    portrait = decode(columns([0, 10, 20, 30, 40, 50, 60, 70], 4).transpose(
        Image.Transpose.TRANSPOSE), gray, resize={"shorter_side": 2}, interpolation="box",
        **PIXELS)
    assert portrait[..., 0].tolist() == [[25, 25], [45, 45]]
    # No scaling (shorter side already 2): the centre columns, exactly.
    unscaled = decode(columns([1, 2, 3, 4, 5, 6], 2), gray, resize={"shorter_side": 2},
                      **PIXELS)
    assert unscaled[..., 0].tolist() == [[3, 4], [3, 4]]
    # 8x8 to shorter side 4, centre 2x2: source columns 2-6, sampled at 3 and 5.
    nearest = decode(columns([0, 10, 20, 30, 40, 50, 60, 70], 8), gray,
                     resize={"shorter_side": 4}, interpolation="nearest", **PIXELS)
    assert nearest[..., 0].tolist() == [[30, 50], [30, 50]]


def textured(width: int, height: int) -> Image.Image:
    """Noise with edges: any sub-pixel shift of the sampling shows."""
    rng = np.random.default_rng(width * 1000 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "lanczos"])
@pytest.mark.parametrize("size", [(640, 480), (480, 640), (333, 250), (250, 333), (301, 299),
                                  (1000, 97), (97, 1000), (256, 256), (255, 611)])
def test_shorter_side_then_center_crop_is_torchvisions_resize_then_crop(size, interpolation):
    """As ``Resize(256)`` then ``CenterCrop(224)``: the shorter side to 256,
    the longer truncated, the crop at the rounded integer offset."""
    image, (crop_w, crop_h) = textured(*size), (224, 200)
    width, height = size
    resized = ((256, int(256 * height / width)) if width <= height
               else (int(256 * width / height), 256))
    left, top = round((resized[0] - crop_w) / 2), round((resized[1] - crop_h) / 2)
    filters = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
    reference = image.resize(resized, filters[interpolation]).crop(
        (left, top, left + crop_w, top + crop_h))
    served = decode(image, ImageGeometry(crop_h, crop_w, 3), resize={"shorter_side": 256},
                    interpolation=interpolation, **PIXELS)
    difference = np.abs(served - np.asarray(reference, np.float32))
    if resized[0] * resized[1] <= 4 * crop_w * crop_h:  # resized whole, then cropped
        assert difference.max() == 0
    else:  # extreme aspect: the crop alone resampled, Pillow's box in float32
        assert difference.mean() < 1


@pytest.mark.parametrize(("size", "rows", "cols"), [
    ((4, 2), slice(1, 3), slice(0, 4)),  # wide: bands above and below
    ((2, 4), slice(0, 4), slice(1, 3)),  # tall: bands left and right
    ((4, 1), slice(1, 2), slice(0, 4)),  # odd margin: the extra row goes below
    ((4, 4), slice(0, 4), slice(0, 4)),  # same aspect: no pad
])
def test_letterbox_places_the_image_in_the_middle_of_the_pad(size, rows, cols):
    row = decode(Image.new("L", size, 200), ImageGeometry(4, 4, 1), resize="letterbox",
                 pad_value=7, **PIXELS)[..., 0]
    inside = np.zeros((4, 4), bool)
    inside[rows, cols] = True
    assert (row[inside] == 200).all() and (row[~inside] == 7).all()


def test_letterbox_pad_goes_through_the_same_values_and_channel_order():
    row = decode(Image.new("RGB", (4, 2), (1, 2, 3)), ImageGeometry(4, 4, 3),
                 resize="letterbox", pad_value=[10, 20, 30], channel_order="BGR",
                 mean=[0, 0, 5], **PIXELS)
    assert row[0, 0].tolist() == [30, 20, 5] and row[1, 0].tolist() == [3, 2, -4]


@pytest.mark.parametrize("resize", ["stretch", "letterbox", {"shorter_side": 40}])
@pytest.mark.parametrize("size", [(1, 1), (1, 97), (97, 1), (3, 500), (500, 3), (31, 17)])
def test_every_policy_takes_any_aspect_ratio(resize, size):
    geometry = ImageGeometry(24, 32, 3)
    row = decode(Image.new("RGB", size, "white"), geometry, resize=resize,
                 **({"pad_value": 0} if resize == "letterbox" else {}))
    assert row.shape == (24, 32, 3) and np.isfinite(row).all()
    white = (row == 1).all(axis=2)
    if resize != "letterbox":
        assert white.all()
        return
    width, height = size  # the white region is the image fitted, centred
    fit = min(32 / width, 24 / height)
    expected = max(1, round(height * fit)), max(1, round(width * fit))
    assert white.sum(axis=0).max() == expected[0] and white.sum(axis=1).max() == expected[1]
    assert white.all(axis=1).sum() in (0, expected[0]) and (white | (row == 0).all(axis=2)).all()


def test_channel_order_mean_and_std():
    image = Image.new("RGB", (3, 3), (10, 20, 30))
    assert decode(image, ImageGeometry(3, 3, 3), channel_order="BGR", **PIXELS)[0, 0].tolist() \
        == [30, 20, 10]
    normalised = decode(image, ImageGeometry(3, 3, 3), mean=[1, 2, 3], std=[1, 2, 3], **PIXELS)
    assert normalised[0, 0].tolist() == [9, 9, 9]
    assert decode(image, ImageGeometry(3, 3, 3), scale=2, offset=-1)[0, 0].tolist() \
        == [19, 39, 59]


def transparent() -> Image.Image:
    """Red where fully transparent, blue opaque, green half transparent."""
    image = Image.new("RGBA", (3, 1))
    image.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 255, 0, 128)])
    return image


@pytest.mark.parametrize(("alpha", "expected"), [
    ("drop", [[255, 0, 0], [0, 0, 255], [0, 255, 0]]),
    ("white", [[255, 255, 255], [0, 0, 255], [127, 255, 127]]),
    ("black", [[0, 0, 0], [0, 0, 255], [0, 128, 0]]),
])
def test_alpha_is_dropped_or_composited(alpha, expected):
    row = decode(transparent(), ImageGeometry(1, 3, 3), alpha=alpha, **PIXELS)
    assert row[0].tolist() == expected


def test_alpha_composited_for_palette_and_grayscale_models():
    gif = transparent().convert("RGB").quantize(4)
    blob = encode(gif, "GIF", transparency=gif.getpixel((0, 0)))
    assert decode(blob, ImageGeometry(1, 3, 3), alpha="white", **PIXELS)[0, 0].tolist() \
        == [255, 255, 255]
    gray = decode(transparent(), ImageGeometry(1, 3, 1), alpha="white", **PIXELS)[0, :, 0]
    assert gray[0] == 255 and gray[1] < 50


def test_compositing_is_counted_in_the_decode_budget():
    image = Image.open(io.BytesIO(encode(Image.new("RGBA", (100, 100)))))
    geometry = ImageGeometry(8, 8, 3)
    assert decoded_bytes(image, geometry) == 100 * 100 * 12
    white = ImagePreprocessing(alpha="white")
    assert decoded_bytes(image, geometry, white) == 100 * 100 * 20


def rotated_jpeg(size: tuple[int, int]) -> bytes:
    """Left half white as stored; EXIF says turn it 90° clockwise to display."""
    image = Image.new("L", size, 0)
    image.paste(255, (0, 0, size[0] // 2, size[1]))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif, quality=100)


def test_exif_orientation_can_be_ignored():
    blob = rotated_jpeg((40, 20))
    stored = decode(blob, ImageGeometry(20, 40, 1), exif_transpose=False)[..., 0]
    assert stored[:, :15].mean() > 0.9 and stored[:, 25:].mean() < 0.1
    upright = decode(blob, ImageGeometry(40, 20, 1))[..., 0]
    assert upright[:15].mean() > 0.9 and upright[25:].mean() < 0.1


def decoded_size(blob: bytes, geometry: ImageGeometry, **fields: object) -> int:
    """What the budget counts for ``blob`` (at the scale JPEG drafts it to)."""
    with pytest.raises(PayloadTooLarge) as refused:
        decode_images([blob], geometry, LIMIT, 1, ImagePreprocessing.model_validate(fields))
    return int(str(refused.value).split("decode to ")[1].split()[0])


def test_jpeg_draft_keeps_what_the_resize_policy_needs():
    photo = encode(Image.new("RGB", (4000, 3000), "gray"), "JPEG")
    small = ImageGeometry(64, 64, 3)
    assert decoded_size(photo, small) == 500 * 375 * 12  # stretch: an eighth is enough
    # Shorter side 512 needs 683x512 of the whole: a quarter (1000x750), not an eighth.
    assert decoded_size(photo, small, resize={"shorter_side": 512}) == 1000 * 750 * 12
    assert decoded_size(photo, ImageGeometry(600, 600, 3), resize="letterbox") \
        == 1000 * 750 * 12  # fits as 600x450: an eighth would be 500x375


def test_jpeg_draft_sizes_the_upright_image():
    # Stored 4000x1000, displayed 1000 wide, 4000 tall; the model takes 400 wide.
    blob = rotated_jpeg((4000, 1000))
    wide = ImageGeometry(100, 400, 1)
    assert decoded_size(blob, wide) == 2000 * 500 * 3  # half: 500 wide once upright
    row = decode(blob, wide)
    assert row.shape == (100, 400, 1)
