"""Detection data: COCO-format (an instances JSON + its images) and YOLO txt label folders,
read into one sample list with boxes in image pixels (x1, y1, x2, y2); the dataset applying
joint image+box transforms (torchvision.transforms.v2 with tv_tensors.BoundingBoxes).

Bad annotations are errors naming the file and the entry: a box outside its image (beyond a
one-pixel tolerance; within it boxes are clamped), an unknown category or class id, an
annotation of an unknown image. Degenerate boxes (no width or height) are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from trainer.components.coco import COCO_FILE, image_size, load_coco
from trainer.components.loader import JointDataset
from trainer.components.yolo import coco_or_yolo, label_lines, yolo_classes
from trainer.errors import DataError
from trainer.registry import DATASET_FORMATS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
TOLERANCE = 1.0  # pixels a box may reach past the image border before it is an error


@dataclass
class BoxSamples:
    images: list[str]
    boxes: list[np.ndarray]  # (k, 4) float32 x1 y1 x2 y2, image pixels
    labels: list[np.ndarray]  # (k,) int64 class index (0-based, no background)
    classes: list[str] = field(default_factory=list)
    dropped: int = 0  # degenerate boxes left out

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> BoxSamples:
        pick = [int(i) for i in idx]
        return BoxSamples(
            [self.images[i] for i in pick],
            [self.boxes[i] for i in pick],
            [self.labels[i] for i in pick],
            self.classes,
        )


def read_detection(path: str | Path, fmt: str = "auto") -> BoxSamples:
    fmt = coco_or_yolo(path) if fmt == "auto" else fmt
    if fmt is None:
        raise DataError(
            f"{path}: not a detection dataset (a COCO instances .json, a folder with {COCO_FILE} "
            "and its images, or a YOLO folder with images/ and labels/)"
        )
    return DATASET_FORMATS.get(fmt)(path)


def _check_box(box, width: int, height: int, where: str) -> np.ndarray | None:
    """The box clamped to the image, None when degenerate; DataError when outside the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(np.isfinite([x1, y1, x2, y2])):
        raise DataError(f"{where}: box {[x1, y1, x2, y2]} is not finite")
    t = TOLERANCE
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        raise DataError(
            f"{where}: box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] (x1, y1, x2, y2) lies outside the "
            f"{width}x{height} image"
        )
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    if x2 - x1 < 1e-3 or y2 - y1 < 1e-3:
        return None
    return np.array([x1, y1, x2, y2], np.float32)


def _pack(boxes: list, labels: list) -> tuple[np.ndarray, np.ndarray]:
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


# ----------------------------------------------------------------------------- COCO


@DATASET_FORMATS.register("coco")
def read_coco(path: str | Path) -> BoxSamples:
    """COCO instances JSON: `images` (id, file_name, width, height), `annotations` (id,
    image_id, category_id, bbox [x, y, w, h], iscrowd), `categories` (id, name). Images are
    looked up next to the JSON, then in its images/ folder. Crowd annotations are left out
    (as in torchvision's references); classes are the categories ordered by id."""
    coco = load_coco(path)
    index = coco.class_index
    files, boxes, labels, dropped = [], [], [], 0
    for image_id, img in coco.images.items():
        kept, classes = [], []
        for ann in coco.annotations[image_id]:
            if ann.get("iscrowd", 0):
                continue
            where = coco.where(ann)
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{where}: bbox must be [x, y, width, height] ({exc})") from exc
            box = _check_box((x, y, x + w, y + h), *coco.image_size(img), f"{where} ({img['file_name']})")
            if box is None:
                dropped += 1
                continue
            kept.append(box)
            classes.append(index[ann["category_id"]])
        files.append(str(coco.image_path(img)))
        b, lab = _pack(kept, classes)
        boxes.append(b)
        labels.append(lab)
    return BoxSamples(files, boxes, labels, [str(c["name"]) for c in coco.categories], dropped)


# ----------------------------------------------------------------------------- YOLO


@DATASET_FORMATS.register("yolo")
def read_yolo(path: str | Path) -> BoxSamples:
    """ROOT/images/* + ROOT/labels/<stem>.txt, one `class cx cy w h` line per box (normalised
    to [0, 1]); an image without a label file has no objects. Class names from
    ROOT/classes.txt (one per line) or the `names` of ROOT/data.yaml."""
    root = Path(path)
    classes = yolo_classes(root)
    images = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{root / 'images'}: no images")
    boxes, labels, dropped = [], [], 0
    for image in images:
        b, lab, d = _read_yolo_labels(root / "labels" / f"{image.stem}.txt", image_size(image), len(classes))
        boxes.append(b)
        labels.append(lab)
        dropped += d
    return BoxSamples([str(p) for p in images], boxes, labels, classes, dropped)


def _read_yolo_labels(file: Path, size: tuple[int, int], num_classes: int):
    boxes, labels, dropped = [], [], 0
    if not file.is_file():
        return *_pack(boxes, labels), dropped
    width, height = size
    for where, parts in label_lines(file):
        try:
            cls, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:])
        except ValueError as exc:
            raise DataError(f"{where}: expected 'class cx cy w h', got '{' '.join(parts)}'") from exc
        if not 0 <= cls < num_classes:
            raise DataError(f"{where}: unknown class id {cls} ({num_classes} classes: 0..{num_classes - 1})")
        xyxy = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        box = _check_box(xyxy, width, height, where)
        if box is None:
            dropped += 1
            continue
        boxes.append(box)
        labels.append(cls)
    return *_pack(boxes, labels), dropped


# ----------------------------------------------------------------------------- dataset


class BoxDataset(JointDataset):
    """(image, target) through one joint transform; target = {'boxes': (k, 4) float xyxy in the
    transformed image's pixels, 'labels': (k,) int64 with 0 = background, so class i is i + 1}."""

    def transform_pair(self, image, i: int):
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(self.samples.boxes[i]),
                format="XYXY",
                canvas_size=tuple(F.get_size(image)),
            ),
            "labels": torch.from_numpy(self.samples.labels[i]) + 1,
        }
        image, target = self.transform(image, target)
        return image.as_subclass(torch.Tensor), {
            "boxes": target["boxes"].as_subclass(torch.Tensor).float(),
            "labels": target["labels"],
        }
