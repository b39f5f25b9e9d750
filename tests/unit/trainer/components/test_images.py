"""Bounded image decoding: colour modes to RGB, pixel limits checked before decoding, truncated,
missing and non-image files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from trainer.components.images import open_image
from trainer.errors import BadImageError, ImageTooLargeError


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_cmyk_jpeg_decodes_to_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    path.write_bytes(encode(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG", quality=95))
    img = open_image(path)
    assert img.mode == "RGB" and img.size == (20, 10)
    r, g, b = img.getpixel((10, 5))
    assert r > 200 and g < 60 and b < 60  # cyan 0, magenta+yellow full: red


def test_16bit_png_decodes_to_rgb():
    arr = np.zeros((6, 9), dtype=np.uint16)
    arr[:, 3:6] = 32896  # ~ 128 in 8 bits
    arr[:, 6:] = 65535
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    img = open_image(data)
    assert img.mode == "RGB" and img.size == (9, 6)
    assert img.getpixel((0, 0)) == (0, 0, 0)
    assert img.getpixel((4, 2)) == (128, 128, 128)
    assert img.getpixel((8, 5)) == (255, 255, 255)


def test_rgba_png_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    out = open_image(encode(img, "PNG"))
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (255, 255, 255)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height (8-bit grey) but carries almost no pixel data: only a
    header check can tell it is too large; decoding it would fail as truncated."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 100)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def test_image_over_max_pixels_is_refused_before_decoding(tmp_path):
    data = huge_png_header(5000, 5000)
    with pytest.raises(BadImageError) as truncated:  # allowed size: decoding fails
        open_image(data, max_pixels=100_000_000)
    assert not isinstance(truncated.value, ImageTooLargeError)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(ImageTooLargeError) as info:
        open_image(path, max_pixels=1_000_000)
    assert str(path) in str(info.value)
    assert "5000x5000" in str(info.value)


def test_real_large_png_is_refused():
    data = encode(Image.new("L", (5000, 5000)), "PNG")
    with pytest.raises(ImageTooLargeError):
        open_image(data, max_pixels=1_000_000)
    assert open_image(data, max_pixels=25_000_000).size == (5000, 5000)


def test_truncated_jpeg_is_a_bad_image():
    data = encode(Image.new("RGB", (64, 64), (200, 10, 10)), "JPEG")
    with pytest.raises(BadImageError, match="upload.jpg"):
        open_image(data[: len(data) // 2], name="upload.jpg")


def test_missing_and_non_image_files(tmp_path):
    with pytest.raises(BadImageError, match="not found"):
        open_image(tmp_path / "nope.png")
    text = tmp_path / "t.png"
    text.write_text("hello")
    with pytest.raises(BadImageError, match=str(text)):
        open_image(text)


# ----------------------------------------------------------------------------- JPEG draft mode


def photo(size: tuple[int, int]) -> Image.Image:
    from sklearn.datasets import load_sample_images

    return Image.fromarray(load_sample_images().images[0]).resize(size, Image.Resampling.BICUBIC)


@pytest.mark.parametrize(
    ("min_side", "decoded"), [(915, (2000, 1500)), (256, (500, 375)), (None, (4000, 3000))]
)
def test_jpeg_decodes_at_the_smallest_dct_scale_that_keeps_min_side(min_side, decoded):
    data = encode(photo((4000, 3000)), "JPEG", quality=90)
    img = open_image(data, min_side=min_side)
    assert img.mode == "RGB" and img.size == decoded
    assert min(img.size) >= (min_side or 0)


def test_draft_decoding_keeps_orientation_formats_and_pixels():
    big = photo((1600, 1200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    rotated = open_image(encode(big, "JPEG", quality=95, exif=exif), min_side=300)
    assert rotated.size == (300, 400)  # decoded at 1/4 (400x300), then turned upright
    assert open_image(encode(big, "PNG"), min_side=300).size == (1600, 1200)  # PNG: no DCT scaling
    full = np.asarray(open_image(encode(big, "JPEG", quality=95)).resize((400, 300), Image.Resampling.BOX))
    draft = np.asarray(open_image(encode(big, "JPEG", quality=95), min_side=300))
    assert np.abs(full.astype(int) - draft.astype(int)).mean() < 3.0  # a downscale, not a crop


def test_train_decode_side_keeps_every_random_crop_at_the_input_size():
    """The decode side for RandomResizedCrop: its smallest crop (scale[0] of the area at the most
    extreme aspect) still spans input_size pixels, so draft decoding never upsamples a crop."""
    import torch
    from torchvision.transforms import v2 as T

    from trainer.components.preprocess import Preprocessing, eval_decode_side, train_decode_side
    from trainer.config import CropAugmentConfig

    prep = Preprocessing(224, (0.5,) * 3, (0.5,) * 3, "bilinear", 0.875)
    aug = CropAugmentConfig()
    side = train_decode_side(prep, aug)
    assert side == 915 and eval_decode_side(prep) == 256
    assert train_decode_side(prep, CropAugmentConfig(scale=(0.5, 1.0), ratio=(1.0, 1.0))) == 317
    torch.manual_seed(0)
    image = torch.empty(3, side, side * 4 // 3)
    for _ in range(2000):
        _, _, h, w = T.RandomResizedCrop.get_params(image, list(aug.scale), list(aug.ratio))
        assert min(h, w) >= 223  # integer rounding of the crop box


def test_pillows_decompression_bomb_warning_is_refused_as_too_large(monkeypatch):
    """Pillow's own bound, for images within vft's pixel limit: its warning (between its limit and
    twice that) is an error too, not a warning that lets the image through."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = encode(Image.new("RGB", (40, 40)), "PNG")  # 1,600 pixels: Pillow warns, does not refuse
    with pytest.raises(ImageTooLargeError, match="too many pixels"):
        open_image(data, max_pixels=10**9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert open_image(data, max_pixels=10**9).size == (40, 40)
