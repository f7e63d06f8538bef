"""images.to_rgb8 / decode_rgb / png_bytes on real files of every mode PIL reads."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from lymphaug.common.errors import DataError
from lymphaug.common.images import decode_rgb, png_bytes, read_rgb, save_png, to_rgb8


def roundtrip(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    buf.seek(0)
    return Image.open(buf)


def rgb8(img: Image.Image) -> np.ndarray:
    out = to_rgb8(img)
    assert out.mode == "RGB"
    arr = np.asarray(out)
    assert arr.dtype == np.uint8
    return arr


def tiff_rgb16(arr: np.ndarray) -> bytes:
    """A minimal uncompressed 48-bit RGB TIFF (PIL cannot write one)."""
    h, w, _ = arr.shape
    data = arr.astype("<u2").tobytes()
    short, long_ = 3, 4
    entries = [
        (256, short, w),
        (257, short, h),
        (258, short, None),
        (259, short, 1),
        (262, short, 2),
        (273, long_, None),
        (277, short, 3),
        (278, short, h),
        (279, long_, len(data)),
        (284, short, 1),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    bps_at, data_at = 8 + ifd_size, 8 + ifd_size + 6
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, typ, val in entries:
        count = 3 if tag == 258 else 1
        val = {258: bps_at, 273: data_at}.get(tag, val)
        if typ == short and tag != 258:
            out += struct.pack("<HHIHH", tag, typ, count, val, 0)
        else:
            out += struct.pack("<HHII", tag, typ, count, val)
    out += struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + data
    return bytes(out)


def test_16bit_grayscale_png_and_tiff_are_scaled_not_clipped():
    a = np.array([[0, 257, 32768, 65535]], np.uint16)
    for fmt in ("PNG", "TIFF"):
        img = roundtrip(Image.fromarray(a), fmt)
        assert img.mode.startswith("I")
        assert rgb8(img)[0, :, 0].tolist() == [0, 1, 128, 255], fmt


def test_16bit_rgb_tiff_is_scaled():
    arr = np.array([[[0, 32768, 65535], [1000, 20000, 60000]]], np.uint16)
    out = rgb8(Image.open(io.BytesIO(tiff_rgb16(arr))))
    assert out.tolist() == [[[0, 128, 255], [3, 78, 234]]]


def test_32bit_int_and_float_images():
    ints = Image.fromarray(np.array([[0, 1000, 65535]], np.int32), "I")
    assert rgb8(ints)[0, :, 0].tolist() == [0, 4, 255]
    floats = Image.fromarray(np.array([[-1.0, 0.0, 1.0]], np.float32), "F")
    assert rgb8(floats)[0, :, 0].tolist() == [0, 128, 255]


def test_alpha_composites_onto_white():
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = [10, 20, 30, 255]
    rgba[0, 1] = [10, 20, 30, 0]
    assert rgb8(Image.fromarray(rgba, "RGBA")).tolist() == [[[10, 20, 30], [255, 255, 255]]]
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    assert rgb8(la).tolist() == [[[10, 10, 10], [255, 255, 255]]]


def test_palette_grayscale_bilevel_cmyk():
    pal = Image.fromarray(np.array([[[200, 0, 0], [0, 0, 200]]], np.uint8)).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=2
    )
    assert rgb8(roundtrip(pal, "GIF")).tolist() == [[[200, 0, 0], [0, 0, 200]]]
    pal_t = pal.copy()
    pal_t.info["transparency"] = pal.getpixel((1, 0))
    assert rgb8(roundtrip(pal_t, "PNG"))[0, 1].tolist() == [255, 255, 255]
    gray = Image.fromarray(np.array([[7, 250]], np.uint8), "L")
    assert rgb8(gray).tolist() == [[[7, 7, 7], [250, 250, 250]]]
    assert rgb8(gray.convert("1")).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    cmyk = Image.fromarray(np.array([[[200, 0, 0]]], np.uint8)).convert("CMYK")
    assert rgb8(roundtrip(cmyk, "JPEG", quality=100))[0, 0, 0] > 180


def test_decode_rgb_rejects_non_images_and_truncated_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a readable image"):
        decode_rgb(tmp_path / "notes.txt")
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png: not a readable image"):
        read_rgb(tmp_path / "cut.png")


def test_png_bytes_are_deterministic_and_lossless(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert png_bytes(arr) == png_bytes(arr.copy())
    save_png(arr, tmp_path / "sub" / "x.png")
    assert np.array_equal(read_rgb(tmp_path / "sub" / "x.png"), arr)
