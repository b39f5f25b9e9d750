"""Batched JPEG decoding on the training device (`data.decode: gpu`). This machine has no GPU:
the same code runs on the CPU device here (torchvision's decode_jpeg takes a list there too,
with libjpeg-turbo, as Pillow does), so its pixels must equal the CPU path's exactly; nvJPEG's
own pixels are compared with Pillow's by bench/gpu_check.sh on a lent GPU."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from trainer.components.device_decode import BatchTransform, decode_batch, read_encoded
from trainer.components.images import open_image
from trainer.components.preprocess import Preprocessing, eval_ops, eval_transform, normalize_ops
from trainer.errors import BadImageError, ImageTooLargeError

CPU = torch.device("cpu")


def photo(width: int = 80, height: int = 60, seed: int = 0) -> Image.Image:
    """Smooth colour gradients with noise: compresses like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


def save(image: Image.Image, path, fmt: str = "JPEG", **kwargs):
    image.save(path, fmt, **kwargs)
    return str(path)


def test_jpegs_stay_bytes_and_other_files_are_decoded_in_the_loader(tmp_path):
    rgb = read_encoded(save(photo(), tmp_path / "a.jpg"))
    assert rgb.jpeg and rgb.data.tobytes() == (tmp_path / "a.jpg").read_bytes()
    assert read_encoded(save(photo().convert("L"), tmp_path / "grey.jpg")).jpeg
    for name, image, fmt in (("b.png", photo(), "PNG"), ("cmyk.jpg", photo().convert("CMYK"), "JPEG")):
        item = read_encoded(save(image, tmp_path / name, fmt))
        assert not item.jpeg
        assert torch.equal(torch.from_numpy(item.data), pil_to_tensor(open_image(tmp_path / name)))


def test_header_checks_and_unreadable_files_name_the_file(tmp_path):
    path = save(photo(), tmp_path / "big.jpg")
    with pytest.raises(ImageTooLargeError, match="big.jpg: 80x60 = 4800 pixels exceeds the limit 1000"):
        read_encoded(path, max_pixels=1000)
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(BadImageError, match="junk.jpg: not a recognised image"):
        read_encoded(str(tmp_path / "junk.jpg"))
    with pytest.raises(BadImageError, match="gone.jpg: cannot read"):
        read_encoded(str(tmp_path / "gone.jpg"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_batch_decoding_equals_pillow_for_every_exif_orientation(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    turned = save(photo(seed=1), tmp_path / "o.jpg", exif=exif)
    paths = [turned, save(photo(48, 64, seed=2), tmp_path / "p.jpg")]
    items = [read_encoded(p) for p in paths]
    assert items[0].orientation == orientation
    images, kept = decode_batch(items, CPU)
    assert kept == [0, 1]
    for path, image in zip(paths, images, strict=True):
        assert torch.equal(image, pil_to_tensor(open_image(path)))


def test_a_jpeg_the_decoder_rejects_is_a_bad_image_or_skipped(tmp_path):
    good = save(photo(), tmp_path / "good.jpg")
    raw = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(raw[: len(raw) // 2])  # the header reads, the pixels do not
    items = [read_encoded(good), read_encoded(str(tmp_path / "cut.jpg"))]
    with pytest.raises(BadImageError, match="cut.jpg: cannot decode"):
        decode_batch(items, CPU)
    images, kept = decode_batch(items, CPU, skip_bad=True)
    assert kept == [0] and torch.equal(images[0], pil_to_tensor(open_image(good)))


def test_progressive_jpegs_decode_like_pillow(tmp_path):
    path = save(photo(), tmp_path / "prog.jpg", progressive=True)
    images, _ = decode_batch([read_encoded(path)], CPU)
    assert torch.equal(images[0], pil_to_tensor(open_image(path)))


def test_batch_eval_transform_equals_the_cpu_transform_per_image(tmp_path):
    prep = Preprocessing(input_size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), crop_pct=0.875)
    pictures = [photo(80, 60, 3), photo(37, 90, 4), photo(40, 40, 5)]
    batch, targets = BatchTransform(eval_ops(prep), normalize_ops(prep))(
        [pil_to_tensor(p) for p in pictures], torch.tensor([0, 1, 2])
    )
    expected = torch.stack([eval_transform(prep)(p) for p in pictures])
    assert type(batch) is torch.Tensor and batch.shape == (3, 3, 32, 32)
    torch.testing.assert_close(batch, expected, rtol=0, atol=1e-6)
    assert targets.tolist() == [0, 1, 2]


def test_mixing_runs_on_the_decoded_batch():
    from torchvision.transforms import v2 as T

    prep = Preprocessing(input_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    mix = BatchTransform(eval_ops(prep), normalize_ops(prep), batch_ops=T.MixUp(alpha=1.0, num_classes=3))
    images = [pil_to_tensor(photo(30, 20, seed)) for seed in range(4)]
    batch, targets = mix(images, torch.tensor([0, 1, 2, 0]))
    assert batch.shape == (4, 3, 16, 16) and targets.shape == (4, 3)
    assert torch.allclose(targets.sum(1), torch.ones(4)) and ((targets > 0) & (targets < 1)).any()


def test_decoding_keeps_the_bytes_untouched(tmp_path):
    """decode_jpeg reads the loader's buffer in place: a second batch from the same items is the same."""
    items = [read_encoded(save(photo(seed=s), tmp_path / f"{s}.jpg")) for s in range(3)]
    first, _ = decode_batch(items, CPU)
    second, _ = decode_batch(items, CPU)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert io.BytesIO(items[0].data.tobytes()).getvalue() == (tmp_path / "0.jpg").read_bytes()


def test_loader_processes_hand_over_numpy_arrays(tmp_path):
    """Across processes a tensor travels as one shared-memory file descriptor, a NumPy array by
    value: a batch of 256 JPEGs from 12 loader processes must not open thousands of descriptors."""
    from torch.utils.data import DataLoader

    from trainer.components.device_decode import EncodedCollate
    from trainer.tasks.classification.data import ImageDataset, read_imagefolder

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        save(photo(seed=len(label)), tmp_path / label / "x.jpg")
        save(photo(seed=3), tmp_path / label / "y.png", "PNG")
    dataset = ImageDataset(read_imagefolder(tmp_path), ["a", "b"], transform=None, encoded=True)
    (items, targets, skipped), *_ = DataLoader(
        dataset, batch_size=4, num_workers=1, collate_fn=EncodedCollate()
    )
    assert skipped == 0 and targets.tolist() == [0, 0, 1, 1]
    assert all(type(item.data) is np.ndarray for item in items) and sum(item.jpeg for item in items) == 2
    images, kept = decode_batch(items, CPU)
    assert kept == [0, 1, 2, 3] and all(image.shape == (3, 60, 80) for image in images)
