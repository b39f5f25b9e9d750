"""COCO annotations as masks (trainer/components/coco.py): polygons and RLE (compressed or not)
drawn as COCO draws them, class masks with crowd regions left out and small objects on top, and
every unusable annotation a DataError naming the file and the annotation id."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from trainer.components.coco import annotation_mask, load_coco, semantic_mask
from trainer.errors import DataError

W, H = 16, 12


def square(x1, y1, x2, y2) -> list[float]:
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def write_coco(tmp_path: Path, annotations: list[dict], sizes: bool = True) -> Path:
    Image.new("RGB", (W, H)).save(tmp_path / "a.png")
    image = {"id": 1, "file_name": "a.png", **({"width": W, "height": H} if sizes else {})}
    doc = {
        "images": [image],
        "annotations": [{"image_id": 1, "iscrowd": 0, **a} for a in annotations],
        "categories": [{"id": 3, "name": "cat"}, {"id": 1, "name": "ant"}],
    }
    file = tmp_path / "annotations.json"
    file.write_text(json.dumps(doc))
    return file


def test_polygons_and_rle_of_one_object_draw_the_same_mask():
    expected = np.zeros((H, W), bool)
    expected[2:8, 3:11] = True  # COCO's rasteriser: the square 3..11 x 2..8 covers these pixels
    polygon = {"segmentation": [square(3, 2, 11, 8)]}
    assert np.array_equal(annotation_mask(polygon, W, H, "p"), expected)
    compressed = mask_utils.encode(np.asfortranarray(expected.astype(np.uint8)))
    as_json = {"size": compressed["size"], "counts": compressed["counts"].decode()}
    assert np.array_equal(annotation_mask({"segmentation": as_json}, W, H, "r"), expected)
    runs, flat, value, count = [], expected.flatten(order="F"), False, 0
    for pixel in flat:  # uncompressed RLE: run lengths in column-major order, zeros first
        if pixel != value:
            runs.append(count)
            value, count = pixel, 0
        count += 1
    runs.append(count)
    uncompressed = {"segmentation": {"size": [H, W], "counts": runs}}
    assert np.array_equal(annotation_mask(uncompressed, W, H, "u"), expected)
    two_parts = {"segmentation": [square(3, 2, 7, 8), square(7, 2, 11, 8)]}
    assert np.array_equal(annotation_mask(two_parts, W, H, "two"), expected)


def test_class_masks_leave_crowds_out_and_keep_small_objects_on_top(tmp_path):
    file = write_coco(
        tmp_path,
        [
            {"id": 10, "category_id": 3, "segmentation": [square(3, 3, 8, 8)]},  # small, on the big one
            {"id": 11, "category_id": 1, "segmentation": [square(1, 1, 15, 11)]},
            {"id": 12, "category_id": 1, "segmentation": [square(12, 0, 16, 2)], "iscrowd": 1},
        ],
        sizes=False,  # read from the image's header
    )
    coco = load_coco(tmp_path)
    assert coco.file == file and [c["name"] for c in coco.categories] == ["ant", "cat"]
    classes = semantic_mask(coco, 1, ignore_index=255)
    assert classes.shape == (H, W) and classes.dtype == np.uint8
    assert classes[0, 0] == 0  # background
    assert classes[5, 12] == 1  # ant (category id 1: the first by id)
    assert classes[5, 5] == 2  # cat, drawn over the larger ant
    assert classes[0, 13] == 255  # the crowd region is not labelled


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ([[1, 1, 5, 1]], "at least 3 points"),
        ([[1, 1, 5, 1, 5]], "at least 3 points"),
        ([[1, 1, 5, 5, 9, 9]], "degenerate polygon"),
        ([square(1, 1, 40, 5)], "outside the 16x12 image"),
        ([], "empty segmentation"),
        ({"size": [H + 1, W], "counts": [0, H * W]}, "RLE size"),
        ("oops", "list of polygons or an RLE"),
    ],
)
def test_an_unusable_annotation_is_an_error_naming_file_and_annotation(tmp_path, segmentation, message):
    write_coco(tmp_path, [{"id": 42, "category_id": 3, "segmentation": segmentation}])
    coco = load_coco(tmp_path)
    with pytest.raises(DataError, match=rf"annotations.json: annotation 42: .*{message}"):
        semantic_mask(coco, 1, ignore_index=255)


def test_unknown_categories_and_images_are_errors_when_the_file_is_read(tmp_path):
    write_coco(tmp_path, [{"id": 7, "category_id": 9, "segmentation": [square(1, 1, 5, 5)]}])
    with pytest.raises(DataError, match=r"annotation 7: unknown category_id 9 \(categories: \[1, 3\]\)"):
        load_coco(tmp_path)
    write_coco(tmp_path, [{"id": 8, "category_id": 3, "segmentation": [square(1, 1, 5, 5)]}])
    doc = json.loads((tmp_path / "annotations.json").read_text())
    doc["annotations"][0]["image_id"] = 5
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="annotation 8: image_id 5 is not in 'images'"):
        load_coco(tmp_path)
