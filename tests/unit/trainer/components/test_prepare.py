"""`vft data prepare`: a downscaled copy with the same layout, names and manifests; small images
copied as they are; boxes and masks follow their images; bad images refused with their file
named."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
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
    assert counts == {"resized": 2, "kept": 1, "copied": 1, "coco": 0}
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


def test_bad_images_and_an_output_inside_the_source_are_refused(folder, tmp_path):
    with pytest.raises(DataError, match="--out: .* is inside"):
        prepare_images(folder, folder / "copy", 300)
    buf = io.BytesIO()
    photo((640, 480)).save(buf, "JPEG")
    (folder / "train" / "flower" / "broken.jpg").write_bytes(buf.getvalue()[:200])
    with pytest.raises(BadImageError, match="broken.jpg"):
        prepare_images(folder, tmp_path / "out2", 300)


def test_coco_boxes_are_rescaled_with_their_images(tmp_path):
    from trainer.tasks.detection.data import read_detection
    from trainer.tasks.detection.shapes import shapes_detection

    shapes_detection(tmp_path / "src", n_train=6, n_val=2, size=200, seed=0)
    counts = prepare_images(tmp_path / "src", tmp_path / "out", short_side=50)
    assert counts["resized"] == 8 and counts["coco"] == 2
    before, after = read_detection(tmp_path / "src" / "train"), read_detection(tmp_path / "out" / "train")
    assert after.classes == before.classes and len(after) == len(before)
    for i in range(len(before)):
        with Image.open(after.images[i]) as img:
            assert img.size == (50, 50)
        np.testing.assert_allclose(after.boxes[i], before.boxes[i] / 4, rtol=1e-5)
        assert np.array_equal(after.labels[i], before.labels[i])


def test_masks_follow_their_images_by_nearest_neighbour(tmp_path):
    from trainer.tasks.segmentation.data import read_mask, read_maskfolder
    from trainer.tasks.segmentation.shapes import shapes_segmentation

    shapes_segmentation(tmp_path / "src", n_train=4, n_val=2, size=120, seed=0)
    prepare_images(tmp_path / "src", tmp_path / "out", short_side=40)
    samples = read_maskfolder(tmp_path / "out" / "train")  # checks each mask against its image's size
    original = read_mask(tmp_path / "src" / "train" / "masks" / Path(samples.masks[0]).name)
    shrunk = read_mask(samples.masks[0])
    assert shrunk.shape == (40, 40) and set(np.unique(shrunk)) <= set(np.unique(original))
    assert np.array_equal(
        shrunk, np.asarray(Image.fromarray(original).resize((40, 40), Image.Resampling.NEAREST))
    )


def test_yolo_labels_are_copied_and_rle_masks_refused(tmp_path):
    src = tmp_path / "yolo"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    photo((400, 300)).save(src / "images" / "a.jpg")
    (src / "labels" / "a.txt").write_text("0 0.5 0.5 0.25 0.3\n")
    prepare_images(src, tmp_path / "out", short_side=150)
    assert (tmp_path / "out" / "labels" / "a.txt").read_text() == "0 0.5 0.5 0.25 0.3\n"
    with Image.open(tmp_path / "out" / "images" / "a.jpg") as img:
        assert img.size == (200, 150)
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 400, "height": 300}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10],
                         "segmentation": {"counts": "abc", "size": [300, 400]}}],
        "categories": [{"id": 1, "name": "x"}],
    }  # fmt: skip
    (src / "images" / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match="annotations.json: annotation 7 has an RLE mask"):
        prepare_images(src, tmp_path / "out2", short_side=150)


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
