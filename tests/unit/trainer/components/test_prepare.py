"""`vft data prepare`: a downscaled copy with the same layout, names and manifests; small images
copied as they are; geometry datasets and bad images refused with their file named."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from sklearn.datasets import load_sample_images
from typer.testing import CliRunner

from trainer.cli import app
from trainer.components.prepare import prepare_images
from trainer.errors import BadImageError, DataError
from trainer.tasks.classification.data import read_imagefolder


def photo(size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(load_sample_images().images[1]).resize(size, Image.Resampling.BICUBIC)


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "src"
    (src / "train" / "flower").mkdir(parents=True)
    (src / "train" / "small").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    photo((1600, 1200)).save(src / "train" / "flower" / "a.jpg", quality=92, exif=exif)
    photo((1200, 1600)).save(src / "train" / "flower" / "b.jpg", quality=92)
    photo((120, 90)).save(src / "train" / "small" / "c.png")
    (src / "train.csv").write_text("path,label\ntrain/flower/a.jpg,flower\ntrain/small/c.png,small\n")
    return src


def test_prepared_copy_keeps_layout_and_names_and_shrinks_only_large_images(folder, tmp_path):
    out = tmp_path / "out"
    counts = prepare_images(folder, out, short_side=300)
    assert counts == {"resized": 2, "kept": 1, "copied": 1}
    with (
        Image.open(out / "train" / "flower" / "a.jpg") as a,
        Image.open(out / "train" / "flower" / "b.jpg") as b,
    ):
        assert a.format == "JPEG" and a.size == (300, 400)  # turned upright, then 300 on the short side
        assert b.size == (300, 400)
    assert (out / "train" / "small" / "c.png").read_bytes() == (
        folder / "train" / "small" / "c.png"
    ).read_bytes()
    assert (out / "train.csv").read_text() == (folder / "train.csv").read_text()
    samples = read_imagefolder(out / "train")
    assert sorted(set(label for labels in samples.labels for label in labels)) == ["flower", "small"]


def test_box_and_mask_datasets_and_bad_images_are_refused(folder, tmp_path):
    (folder / "instances.json").write_text("{}")
    with pytest.raises(DataError, match="instances.json: box or mask data"):
        prepare_images(folder, tmp_path / "out", 300)
    (folder / "instances.json").unlink()
    with pytest.raises(DataError, match="--out: .* is inside"):
        prepare_images(folder, folder / "copy", 300)
    buf = io.BytesIO()
    photo((640, 480)).save(buf, "JPEG")
    (folder / "train" / "flower" / "broken.jpg").write_bytes(buf.getvalue()[:200])
    with pytest.raises(BadImageError, match="broken.jpg"):
        prepare_images(folder, tmp_path / "out2", 300)


def test_vft_data_prepare(folder, tmp_path):
    result = CliRunner().invoke(
        app, ["data", "prepare", str(folder), "--out", str(tmp_path / "out"), "--size", "150"]
    )
    assert result.exit_code == 0, result.output
    assert "2 images resized to a 300-px shorter side" in " ".join(result.output.split())  # rich wraps
    missing = CliRunner().invoke(
        app, ["data", "prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert missing.exit_code == 2 and "nope: not a folder" in missing.output
