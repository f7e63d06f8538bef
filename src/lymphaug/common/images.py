"""Reading any PIL-readable image as RGB 8-bit, and writing PNGs reproducibly."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from lymphaug.common.errors import DataError


def to_rgb8(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (16-bit, float, RGBA, grayscale, palette, CMYK) to RGB 8-bit.

    16-bit and float images are rescaled by their dtype's range, not clipped, so a
    16-bit TIFF does not come out white.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if img.mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            scaled = (arr - lo) / (hi - lo or 1.0) * 255.0
        else:
            maxval = 65535.0 if arr.max() > 255 or img.mode.startswith("I;16") else 255.0
            scaled = arr.astype(np.float64) / maxval * 255.0
        img = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def decode_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to an HxWx3 uint8 array.

    Raises DataError (without the path, for callers that name the file their own
    way) for anything that does not fully decode: a text file, a truncated image.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(to_rgb8(img))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"not a readable image ({type(err).__name__}: {err})") from None


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to an HxWx3 uint8 array; a clear DataError if it cannot."""
    try:
        return decode_rgb(path)
    except DataError as err:
        raise DataError(f"{path}: {err}") from None


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float pixel values on the 0..255 scale -> uint8: rounded, then clipped.

    Out-of-range values saturate instead of wrapping (the reference study's uint8 cast
    turned them into speckle). Rounds in place to spare a copy of a large batch, so
    callers pass a temporary (e.g. ``to_uint8(images * 255.0)``).
    """
    return np.clip(np.rint(pixels, out=pixels), 0, 255, out=pixels).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    """Encode an HxWx3 uint8 array as PNG (no timestamps: same pixels, same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array), "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def save_png(array: np.ndarray, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(array))
