"""Tests of the image decoding policy: colour modes, geometry, and refusal of bad input."""

import io
import pickle
import re

import numpy as np
import PIL.Image
import pytest

from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.tasks.data.sources import image_decoding
from diffusion_jax.tasks.data.sources.image_decoding import ImageDecodeError, decode_image
from tests.format_fixtures import encode_image as encode
from tests.format_fixtures import png_header_only

RNG = np.random.default_rng(0)


def test_a_square_rgb_image_at_the_resolution_passes_through_unchanged():
    pixels = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for policy in image_decoding.POLICIES:
        decoded = decode_image(
            encode(PIL.Image.fromarray(pixels), "PNG"), resolution=16, policy=policy
        )
        assert decoded.dtype == np.uint8 and decoded.shape == (16, 16, 3)
        np.testing.assert_array_equal(decoded, pixels)


def test_grayscale_and_palette_images_become_rgb():
    gray = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    decoded = decode_image(encode(PIL.Image.fromarray(gray), "PNG"), resolution=8)
    np.testing.assert_array_equal(decoded, np.repeat(gray[..., None], 3, axis=-1))

    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    image = PIL.Image.fromarray(indices, mode="P")
    image.putpalette(palette.ravel().tolist())
    np.testing.assert_array_equal(
        decode_image(encode(image, "PNG"), resolution=8), palette[indices]
    )


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits():
    values = np.array([0, 128, 129, 257, 1000, 32896, 65534, 65535], np.uint16)
    values = np.concatenate([values, RNG.integers(0, 65536, 8, dtype=np.uint16)]).reshape(4, 4)
    data = encode(PIL.Image.fromarray(values), "PNG")
    assert PIL.Image.open(io.BytesIO(data)).mode == "I;16"
    expected = np.rint(values.astype(np.float64) / 257.0)
    decoded = decode_image(data, resolution=4)
    np.testing.assert_array_equal(decoded, np.repeat(expected[..., None], 3, axis=-1))


def test_alpha_is_composited_on_the_white_background():
    rgb = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)
    a = alpha[..., None].astype(np.float64) / 255.0
    expected = a * rgb + (1.0 - a) * 255.0
    decoded = decode_image(encode(PIL.Image.fromarray(rgba, mode="RGBA"), "PNG"), resolution=8)
    np.testing.assert_allclose(decoded, expected, atol=1.0)

    gray_alpha = np.stack([rgb[..., 0], alpha], axis=-1)
    decoded = decode_image(encode(PIL.Image.fromarray(gray_alpha, mode="LA"), "PNG"), resolution=8)
    np.testing.assert_allclose(decoded, np.broadcast_to(expected[..., :1], (8, 8, 3)), atol=1.0)


def test_a_transparent_palette_entry_shows_the_background():
    image = PIL.Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    image.putpalette([10, 20, 30, 200, 100, 50])
    decoded = decode_image(encode(image, "PNG", transparency=1), resolution=2)
    np.testing.assert_array_equal(decoded[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(decoded[0, 1], image_decoding.BACKGROUND)


def test_cmyk_jpeg_follows_the_subtractive_closed_form():
    cmyk = (10, 200, 30, 50)
    data = encode(PIL.Image.new("CMYK", (16, 16), cmyk), "JPEG", quality=95)
    c, m, y, k = np.array(cmyk, np.float64)
    expected = (255.0 - np.array([c, m, y])) * (255.0 - k) / 255.0
    decoded = decode_image(data, resolution=16)
    np.testing.assert_allclose(decoded.reshape(-1, 3), np.tile(expected, (256, 1)), atol=2.0)


def test_exif_orientation_is_applied():
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:, 8:] = 255
    exif = PIL.Image.Exif()
    exif[0x0112] = 3  # Rotated by 180 degrees.
    data = encode(PIL.Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(data, resolution=16).astype(int)
    np.testing.assert_allclose(decoded, 255 - pixels.astype(int), atol=8)


def column_index_image(width: int, height: int) -> np.ndarray:
    """uint8 [height, width, 3] whose every pixel holds its column index."""
    return np.broadcast_to(np.arange(width, dtype=np.uint8)[None, :, None], (height, width, 3))


@pytest.mark.parametrize("policy", image_decoding.POLICIES)
def test_a_wide_image_at_the_resolution_keeps_its_central_square(policy):
    # 21 x 16: the 16 x 16 centre starts at column (21 - 16) // 2 = 2 for both policies.
    image = column_index_image(21, 16)
    decoded = decode_image(encode(PIL.Image.fromarray(image), "PNG"), resolution=16, policy=policy)
    np.testing.assert_array_equal(decoded, image[:, 2:18])


def test_resize_of_a_tall_image_resamples_its_central_square():
    # 32 wide, 96 tall: thirds red / green / blue from the top; the centre square is all green.
    image = np.zeros((96, 32, 3), np.uint8)
    for third in range(3):
        image[32 * third : 32 * (third + 1), :, third] = 255
    decoded = decode_image(encode(PIL.Image.fromarray(image), "PNG"), resolution=16)
    np.testing.assert_array_equal(decoded, np.broadcast_to([0, 255, 0], (16, 16, 3)))


def test_resize_halves_a_square_image_with_a_local_filter():
    # Four constant 16 x 16 quadrants halved to 16 x 16: Lanczos-3 at scale 2 reaches 6 input
    # pixels from an output pixel's centre, so output pixels 0-4 of each corner stay pure.
    colours = RNG.integers(0, 256, (2, 2, 3), dtype=np.uint8)
    image = colours.repeat(16, axis=0).repeat(16, axis=1)
    decoded = decode_image(encode(PIL.Image.fromarray(image), "PNG"), resolution=16)
    np.testing.assert_array_equal(decoded[:5, :5], np.broadcast_to(colours[0, 0], (5, 5, 3)))
    np.testing.assert_array_equal(decoded[-5:, -5:], np.broadcast_to(colours[1, 1], (5, 5, 3)))
    np.testing.assert_array_equal(decoded[:5, -5:], np.broadcast_to(colours[0, 1], (5, 5, 3)))


def test_center_crop_keeps_native_pixels_of_a_larger_image():
    pixels = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    decoded = decode_image(
        encode(PIL.Image.fromarray(pixels), "PNG"), resolution=16, policy="center_crop"
    )
    # Top-left corner at ((40 - 16) // 2, (30 - 16) // 2) = (12, 7).
    np.testing.assert_array_equal(decoded, pixels[7:23, 12:28])


def test_center_crop_of_a_smaller_image_upsamples_like_resize():
    data = encode(PIL.Image.fromarray(RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)), "PNG")
    np.testing.assert_array_equal(
        decode_image(data, resolution=16, policy="center_crop"),
        decode_image(data, resolution=16, policy="resize"),
    )


def decode_error(data: bytes, **options) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, resolution=8, source="faces/x.jpg", **options)
    assert str(caught.value).startswith("faces/x.jpg: ")
    return caught.value


def test_bad_bytes_raise_an_error_naming_the_source_and_the_reason():
    jpeg = encode(PIL.Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    cases = [
        (b"", "empty", "empty file \\(0 bytes\\)"),
        (b"name,label\nalice,0\n", "not_an_image", "not a recognised image"),
        (jpeg[: len(jpeg) // 2], "corrupt", "truncated or corrupt image"),
        (encode(PIL.Image.new("RGB", (1, 1)), "TIFF"), "not_an_image", "JPEG, PNG, WEBP"),
    ]
    for data, kind, reason in cases:
        error = decode_error(data)
        assert error.kind == kind and error.source == "faces/x.jpg"
        assert re.search(reason, str(error)), str(error)
    # One error type for bad input, which survives pickling (grain's worker processes).
    assert isinstance(error, BadInputError)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.kind, copy.reason) == (
        ImageDecodeError,
        str(error),
        error.kind,
        error.reason,
    )


def test_a_header_claiming_too_many_pixels_is_refused_before_decoding():
    error = decode_error(png_header_only(300, 200), max_pixels=59_999)
    assert error.kind == "too_large"
    assert "300x200 = 60000 pixels exceeds max_pixels = 59999" in str(error)
    # At the limit the header passes and the decoder finds no pixel data.
    assert decode_error(png_header_only(300, 200), max_pixels=60_000).kind == "corrupt"


def test_pil_decompression_bomb_error_becomes_ours():
    # 30000 x 30000 exceeds twice PIL.Image.MAX_IMAGE_PIXELS, which PIL refuses on opening.
    error = decode_error(png_header_only(30_000, 30_000), max_pixels=10**12)
    assert error.kind == "too_large" and "decompression bomb" in str(error)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"resolution": 0}, "resolution must be a positive integer, got 0"),
        ({"resolution": 16.0}, "resolution must be a positive integer, got 16.0"),
        ({"resolution": 16, "policy": "squash"}, "policy must be one of .*, got 'squash'"),
        ({"resolution": 16, "max_pixels": -1}, "max_pixels must be a positive integer, got -1"),
    ],
)
def test_invalid_arguments_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        decode_image(b"\x89PNG", **options)


def test_non_bytes_data_is_refused():
    with pytest.raises(ValueError, match="data must be bytes, got str for a.png"):
        decode_image("a.png", resolution=8, source="a.png")


def test_to_model_range_maps_uint8_onto_minus_one_one():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    scaled = image_decoding.to_model_range(pixels)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, pixels.astype(np.float64) / 127.5 - 1.0, rtol=0, atol=1e-6)
    assert scaled[0, 0] == -1.0 and scaled[-1, -1] == 1.0
    with pytest.raises(ValueError, match="image must have dtype uint8, got float32"):
        image_decoding.to_model_range(scaled)
