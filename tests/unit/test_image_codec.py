import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deployments.codecs import image as image_codec
from deployments.codecs.image import decode_images, decoded_bytes
from deployments.errors import BadRequest, PayloadTooLarge
from deployments.preprocessing import DEFAULT, ImagePreprocessing, ShorterSide
from deployments.types import ImageGeometry

SAMPLES = Path(__file__).resolve().parents[2] / "models" / "samples"
GRAY = ImageGeometry(28, 28, 1)
RGB = ImageGeometry(32, 48, 3)
LIMIT = 4096 * 4096
BUDGET = 2**30  # bytes decoding may allocate: far above these tests' images


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_grayscale_png_scaled_to_unit_range():
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    batch = decode_images([encode(Image.fromarray(pixels))], GRAY, LIMIT, BUDGET)
    assert batch.shape == (1, 28, 28, 1) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0, ..., 0], pixels / 255.0, atol=1e-6)


def test_rgb_image_converted_to_grayscale_and_resized():
    image = Image.new("RGB", (100, 60), (255, 255, 255))
    batch = decode_images([encode(image, "JPEG")], GRAY, LIMIT, BUDGET)
    assert batch.shape == (1, 28, 28, 1)
    assert batch.min() > 0.98  # white stays white after conversion and resize


def test_grayscale_converted_to_rgb_geometry_height_width_order():
    image = Image.new("L", (10, 10), 128)
    batch = decode_images([encode(image)], RGB, LIMIT, BUDGET)
    assert batch.shape == (1, 32, 48, 3)
    np.testing.assert_allclose(batch, 128 / 255.0, atol=1e-6)


def test_batch_keeps_order():
    blobs = [encode(Image.new("L", (28, 28), v)) for v in (0, 255, 51)]
    batch = decode_images(blobs, GRAY, LIMIT, BUDGET)
    np.testing.assert_allclose(batch[:, 0, 0, 0], [0.0, 1.0, 0.2], atol=1e-6)


def test_samples_decode():
    blobs = [p.read_bytes() for p in sorted(SAMPLES.iterdir())]
    batch = decode_images(blobs, GRAY, LIMIT, BUDGET)
    assert batch.shape == (10, 28, 28, 1)
    assert batch.min() >= 0.0 and batch.max() <= 1.0


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "empty image"),
        (b"not an image at all", "not one of the formats PNG, JPEG"),
        (encode(Image.effect_noise((64, 64), 60))[:-60], "truncated or corrupt"),
    ],
)
def test_bad_images_are_400(blob, message):
    with pytest.raises(BadRequest, match=message):
        decode_images([blob], GRAY, LIMIT, BUDGET)


def test_index_named_in_batch_errors():
    good = encode(Image.new("L", (28, 28)))
    with pytest.raises(BadRequest, match=r"image 1"):
        decode_images([good, b"junk"], GRAY, LIMIT, BUDGET)


def test_too_many_pixels_is_413_before_decoding():
    blob = encode(Image.new("L", (300, 300)))
    with pytest.raises(PayloadTooLarge, match="300x300 = 90000 pixels, the limit is 10000"):
        decode_images([blob], GRAY, 10_000, BUDGET)


def test_no_images_is_400():
    with pytest.raises(BadRequest, match="no images"):
        decode_images([], GRAY, LIMIT, BUDGET)


def test_malformed_header_is_400_not_a_crash():
    bmp = bytearray(encode(Image.new("L", (8, 8)), "BMP"))
    bmp[14] = 99  # an impossible DIB header size
    with pytest.raises(BadRequest, match="cannot decode image"):
        decode_images([bytes(bmp)], GRAY, LIMIT, BUDGET)


def test_formats_outside_the_allow_list_are_refused():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    with pytest.raises(BadRequest, match="not one of the formats"):
        decode_images([eps], GRAY, LIMIT, BUDGET)


def test_unconvertible_pixel_mode_is_named():
    lab = encode(Image.new("LAB", (8, 8)), "TIFF")
    with pytest.raises(BadRequest, match="pixel mode LAB"):
        decode_images([lab], GRAY, LIMIT, BUDGET)


def test_exif_orientation_is_applied():
    image = Image.new("L", (40, 20), 0)
    image.paste(255, (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=100)
    batch = decode_images([buffer.getvalue()], ImageGeometry(40, 20, 1), LIMIT, BUDGET)
    # Displayed upright the image is 20 wide, 40 tall, white on top.
    assert batch[0, :15, :, 0].mean() > 0.9 and batch[0, 25:, :, 0].mean() < 0.1


def test_16_bit_grayscale_is_scaled_not_clipped():
    samples = np.linspace(0, 65535, 28 * 28).astype(np.uint16).reshape(28, 28)
    buffer = io.BytesIO()
    Image.fromarray(samples).save(buffer, format="PNG")
    batch = decode_images([buffer.getvalue()], ImageGeometry(28, 28, 1), 10**6, BUDGET)
    expected = (samples >> 8).astype(np.float32) / 255
    assert np.allclose(batch[0, ..., 0], expected, atol=1e-6)


def test_palette_images_decode_to_their_colours():
    gray = Image.fromarray(np.full((28, 28), 200, np.uint8)).convert("P")
    buffer = io.BytesIO()
    gray.save(buffer, format="PNG")
    batch = decode_images([buffer.getvalue()], ImageGeometry(28, 28, 1), 10**6, BUDGET)
    assert np.allclose(batch, 200 / 255)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_images_are_refused(fmt):
    frames = [Image.new("L", (28, 28), c) for c in (0, 255, 128)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:])
    with pytest.raises(BadRequest, match=r"animated \(3 frames\): send a single frame"):
        decode_images([buffer.getvalue()], ImageGeometry(28, 28, 1), 10**6, BUDGET)


def test_corrupt_frames_are_400_whatever_pillow_raises():
    # Counting a GIF's frames walks the file; a bad block type makes Pillow
    # raise IndexError, which is still the client's bad image.
    gif = bytearray(encode(Image.new("L", (28, 28)), "GIF"))
    gif[-1] = 0x21  # the trailer byte turned into an extension introducer
    with pytest.raises(BadRequest, match="truncated or corrupt"):
        decode_images([bytes(gif)], GRAY, LIMIT, BUDGET)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on bad files
def test_mutated_images_never_escape_as_other_errors():
    rng = np.random.default_rng(0)
    seeds = [encode(Image.new("RGB", (20, 12), (9, 99, 199)), fmt)
             for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")]
    refused = 0
    for _ in range(3000):
        blob = bytearray(seeds[rng.integers(len(seeds))])
        for at in rng.integers(0, len(blob), rng.integers(1, 4)):
            blob[at] = rng.integers(256)
        try:  # any other exception fails the test
            decode_images([bytes(blob)], RGB, LIMIT, BUDGET)
        except (BadRequest, PayloadTooLarge):
            refused += 1
    assert refused > 300  # the mutations did break many of them


def flat_png(size: int, mode: str = "RGBA") -> bytes:
    """A large image of one colour: a few KB compressed, megabytes decoded."""
    return encode(Image.new(mode, (size, size)))


def test_the_requests_decoded_size_is_checked_before_any_image_is_decoded():
    blob = flat_png(4096)  # 16 MP of RGBA: ~50 KB as a PNG, 192 MiB on the way in
    assert len(blob) < 100_000
    assert decoded_bytes(Image.open(io.BytesIO(blob)), RGB) == 4096 * 4096 * 12
    decode_images([blob], RGB, LIMIT, 256 * 2**20)  # one fits
    with pytest.raises(PayloadTooLarge, match=r"4 images would decode to 805306368 bytes, "
                                              r"the limit is 268435456"):
        decode_images([blob] * 4, RGB, LIMIT, 256 * 2**20)


def test_the_budget_counts_jpegs_at_the_scale_they_decode_at():
    photo = encode(Image.new("RGB", (4000, 3000), "gray"), "JPEG")
    image = Image.open(io.BytesIO(photo))
    image.draft("RGB", (48, 32))  # what decoding does before it reads the pixels
    assert image.size == (500, 375)  # an eighth of each side
    batch = decode_images([photo] * 64, RGB, LIMIT, 64 * 500 * 375 * 12)
    assert batch.shape == (64, 32, 48, 3)


def test_wide_grayscale_is_narrowed_without_widening_its_samples():
    for mode, value, expected in (("I;16", 65535, 255), ("I;16", 256, 1), ("I", 70_000, 255)):
        image = Image.new(mode, (8, 8), value)
        batch = decode_images([encode(image, "PNG" if mode == "I;16" else "TIFF")],
                              ImageGeometry(8, 8, 1), LIMIT, BUDGET)
        assert np.allclose(batch, expected / 255), mode


def _photo(width: int, height: int, mode: str, seed: int) -> Image.Image:
    """Smooth gradients under noise: what a camera's JPEG holds, not flat blocks."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    pixels = (base + rng.normal(0, 25, base.shape)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


# (size, Pillow's mode, save options): 4:4:4, 4:2:2 and 4:2:0 colour, progressive,
# low quality, odd sizes, a grayscale JPEG, one large enough for the draft to reduce.
JPEGS = [
    ((224, 224), "RGB", {"quality": 90}),
    ((224, 224), "RGB", {"quality": 95, "subsampling": 0}),
    ((97, 61), "RGB", {"quality": 75, "subsampling": 1}),
    ((300, 200), "RGB", {"quality": 50, "progressive": True}),
    ((61, 97), "L", {"quality": 85}),
    ((1000, 800), "RGB", {"quality": 90}),
]
PLAIN_DECODES = [
    (ImageGeometry(224, 224, 3), DEFAULT),
    (ImageGeometry(40, 56, 3), ImagePreprocessing(resize="letterbox", interpolation="bicubic")),
    (ImageGeometry(48, 48, 3), ImagePreprocessing(resize=ShorterSide(shorter_side=56))),
    (GRAY, DEFAULT),
    (ImageGeometry(64, 64, 1), ImagePreprocessing(resize="letterbox")),
]


@pytest.mark.parametrize(("size", "mode", "options"), JPEGS)
@pytest.mark.parametrize(("geometry", "preprocessing"), PLAIN_DECODES)
def test_jpegs_decoded_by_libjpeg_turbo_directly_are_pillows_pixels_to_the_bit(
    size, mode, options, geometry, preprocessing, monkeypatch: pytest.MonkeyPatch,
):
    buffer = io.BytesIO()
    _photo(*size, mode, seed=size[0]).save(buffer, format="JPEG", **options)
    blob = buffer.getvalue()
    direct, jpeg_pixels = [], image_codec._jpeg_pixels

    def counted(*args):
        pixels = jpeg_pixels(*args)
        direct.append(pixels is not None)
        return pixels

    with monkeypatch.context() as patch:
        patch.setattr(image_codec, "_jpeg_pixels", counted)
        fast = decode_images([blob], geometry, LIMIT, BUDGET, preprocessing)
    with monkeypatch.context() as patch:
        patch.setattr(image_codec, "_jpeg_pixels", lambda *args: None)
        pillow = decode_images([blob], geometry, LIMIT, BUDGET, preprocessing)
    np.testing.assert_array_equal(fast, pillow)
    # Decoded directly unless Pillow must: reduced by the draft, or another mode.
    drafted = image_codec._open(blob, geometry, preprocessing, LIMIT, "")
    assert direct == [drafted.size == size and drafted.mode == geometry.pillow_mode]


def test_jpegs_libjpeg_warns_about_are_left_to_pillow():
    blob = encode(_photo(64, 64, "RGB", seed=1), "JPEG")
    cut = blob[: len(blob) * 2 // 3]  # truncated: libjpeg warns, Pillow refuses
    image = image_codec._open(cut, RGB, DEFAULT, LIMIT, "")
    assert image_codec._jpeg_pixels(image, cut, RGB, DEFAULT) is None
    with pytest.raises(BadRequest, match="truncated or corrupt"):
        decode_images([cut], RGB, LIMIT, BUDGET)
