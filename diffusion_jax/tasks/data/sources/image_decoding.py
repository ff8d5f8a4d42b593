"""Decoding untrusted image files into the model's RGB squares, and scaling them to [-1, 1].

Every source of face images (identity folders, RecordIO records, verification `.bin` files) goes
through `decode_image`, so all of them share one policy:

1. Safety. Only JPEG, PNG, WebP, BMP and GIF are parsed. The pixel count is read from the header
   and checked against `max_pixels` before any pixel is decoded (a decompression bomb of a few
   kilobytes can claim gigapixels). Every failure raises `ImageDecodeError`, naming the source.
2. Orientation. The EXIF orientation tag, if any, is applied (what an image viewer shows).
   Animated GIF/WebP files give their first frame.
3. Colour. Any mode becomes 8-bit RGB:
   - L, 1, P, CMYK, YCbCr, ...: PIL's conversion (CMYK: R = (255 - C)(255 - K) / 255, ...);
   - 16-bit grayscale (I;16*, and I as PNG gives it): v -> round(v / 257), so 65535 -> 255;
   - alpha (RGBA, LA, PA, or a palette/colour-key transparency) is composited onto `BACKGROUND`
     (white): out = (a * rgb + (255 - a) * background) / 255.
4. Geometry, to an R x R square (R = `resolution`):
   - "resize": the central square of side min(W, H) (the whole image when square), resampled to
     R x R with an antialiased Lanczos filter; aligned face crops (112 x 112) keep their full
     field of view, and pass through unchanged when R = 112;
   - "center_crop": the central square of side min(W, H, R) at native scale, so a larger image
     gives its central R x R pixels untouched (e.g. the face region of an unaligned 250 x 250 LFW
     image); an image whose short side is below R is handled as by "resize".
   Centres round down: a square of side s starts at ((W - s) // 2, (H - s) // 2).
"""

from __future__ import annotations

import io
import struct

import numpy as np
import PIL.Image
import PIL.ImageOps

from diffusion_jax.core.bad_input import BadInputError

POLICIES = ("resize", "center_crop")
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
DEFAULT_MAX_PIXELS = 40_000_000
BACKGROUND = (255, 255, 255)

_SIXTEEN_BIT_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# What PIL raises on corrupt or truncated data (its parsers also use SyntaxError and struct.error).
_DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


class ImageDecodeError(BadInputError):
    """An image that cannot be decoded safely. `str(error)` is "<source>: <reason>".

    `kind` classifies the failure: "empty" (zero bytes), "not_an_image" (no supported format
    recognised, or a header too short to tell), "too_large" (more pixels than max_pixels),
    "corrupt" (truncated or damaged data) or "unsupported_mode" (a pixel format with no RGB
    conversion).
    """

    def __init__(self, source: str, kind: str, reason: str):
        super().__init__(source, reason)
        self.kind = kind


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _open_checked(data: bytes, *, max_pixels: int, source: str) -> PIL.Image.Image:
    """Parses the header (no pixel data) and refuses images with more than max_pixels pixels."""
    if not data:
        raise ImageDecodeError(source, "empty", "empty file (0 bytes)")
    try:
        image = PIL.Image.open(io.BytesIO(data), formats=FORMATS)
    except PIL.Image.DecompressionBombError as error:
        raise ImageDecodeError(
            source, "too_large", f"decompression bomb refused by PIL: {error}"
        ) from error
    except PIL.UnidentifiedImageError:
        raise ImageDecodeError(
            source,
            "not_an_image",
            f"not a recognised image ({', '.join(FORMATS)}) or its header is truncated "
            f"({len(data)} bytes)",
        ) from None
    except _DECODER_ERRORS as error:
        raise ImageDecodeError(source, "corrupt", f"corrupt image header: {error}") from error
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            source,
            "too_large",
            f"{width}x{height} = {width * height} pixels exceeds max_pixels = {max_pixels} "
            "(possible decompression bomb)",
        )
    return image


def _to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """8-bit RGB of any mode (see the module doc, step 3)."""
    if image.mode in _SIXTEEN_BIT_GRAY_MODES:
        values = np.asarray(image).astype(np.float64)
        gray = np.rint(np.clip(values, 0, 65535) / 257).astype(np.uint8)
        return PIL.Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        background = PIL.Image.new("RGBA", image.size, (*BACKGROUND, 255))
        return PIL.Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _central_box(width: int, height: int, side: int) -> tuple[int, int, int, int]:
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def _to_square(image: PIL.Image.Image, resolution: int, policy: str) -> PIL.Image.Image:
    """The R x R square of the policy (see the module doc, step 4)."""
    width, height = image.size
    side = min(width, height) if policy == "resize" else min(width, height, resolution)
    square = image.crop(_central_box(width, height, side))
    if side == resolution:
        return square
    # Cropping first keeps the filter from reaching pixels outside the square.
    return square.resize((resolution, resolution), PIL.Image.Resampling.LANCZOS)


def decode_image(
    data: bytes,
    *,
    resolution: int,
    policy: str = "resize",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    source: str = "<bytes>",
) -> np.ndarray:
    """Decodes an encoded image into uint8 RGB [resolution, resolution, 3] by the module's policy.

    Args:
      data: the encoded file (bytes, bytearray or memoryview).
      resolution: R, the side of the output square.
      policy: "resize" or "center_crop" (see the module doc).
      max_pixels: the largest width x height accepted, checked from the header before decoding.
        PIL's own limit (PIL.Image.MAX_IMAGE_PIXELS) also applies: it warns above it and refuses
        twice as many, a refusal raised as ImageDecodeError.
      source: what the bytes are (a file path, a record index), named in every error.

    Raises:
      ImageDecodeError: the bytes are empty, not a supported image, too large, truncated or
        corrupt, or of an unconvertible mode; the message names `source` and the reason.
      ValueError: an argument is invalid.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"data must be bytes, got {type(data).__name__} for {source}")
    _check_positive_int("resolution", resolution)
    _check_positive_int("max_pixels", max_pixels)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    image = _open_checked(bytes(data), max_pixels=max_pixels, source=source)
    try:
        image.load()
        image = PIL.ImageOps.exif_transpose(image)
    except _DECODER_ERRORS as error:
        raise ImageDecodeError(source, "corrupt", f"truncated or corrupt image: {error}") from error
    try:
        image = _to_rgb(image)
    except ValueError as error:
        raise ImageDecodeError(
            source, "unsupported_mode", f"cannot convert mode {image.mode} to RGB: {error}"
        ) from error
    return np.asarray(_to_square(image, int(resolution), policy), dtype=np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image [H, W, 3], by PIL (TFDS's own encoder would start TensorFlow)."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
"""ITU-R 601 luma of RGB: the grey of torchvision's contrast and saturation jitter."""


def to_model_range(image: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1]: x / 127.5 - 1 (0 -> -1, 255 -> 1)."""
    if image.dtype != np.uint8:
        raise ValueError(f"image must have dtype uint8, got {image.dtype}")
    return image.astype(np.float32) / 127.5 - 1.0
