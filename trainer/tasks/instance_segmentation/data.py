"""Instance segmentation data: COCO instances JSON (polygons or RLE per object; crowd regions
kept as COCO keeps them) and YOLO segmentation label folders (one normalised polygon per line),
read into one sample list holding each object as a compressed RLE (pycocotools) with its class;
the dataset decoding them into per-object masks that go through the joint transform with the
image, boxes taken from the transformed masks (so they always fit them).

Bad annotations are errors naming the file and the annotation id or label line (degenerate or
self-intersecting polygons, points or RLEs off the image, unknown categories or class ids).
Objects without a pixel are dropped and counted."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from trainer.components.coco import COCO_FILE, annotation_rle, image_size, load_coco
from trainer.components.loader import JointDataset
from trainer.components.yolo import coco_or_yolo, read_polygons, yolo_classes
from trainer.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class InstanceSamples:
    images: list[str]
    objects: list[list[dict]]  # per image: compressed RLEs ({size: [h, w], counts: bytes})
    labels: list[np.ndarray]  # per image: (k,) int64 class index (0-based, no background)
    crowd: list[np.ndarray]  # per image: (k,) bool, COCO's iscrowd
    classes: list[str] = field(default_factory=list)
    dropped: int = 0  # objects without a pixel, left out

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> InstanceSamples:
        pick = [int(i) for i in idx]
        return InstanceSamples(
            [self.images[i] for i in pick],
            [self.objects[i] for i in pick],
            [self.labels[i] for i in pick],
            [self.crowd[i] for i in pick],
            self.classes,
        )


def read_instances(path: str | Path, fmt: str = "auto") -> InstanceSamples:
    fmt = coco_or_yolo(path) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise DataError(
            f"{path}: not an instance segmentation dataset (a COCO instances .json, a folder with "
            f"{COCO_FILE} and its images, or a YOLO folder with images/ and labels/)"
        )
    return READERS[fmt](Path(path))


def _has_pixels(rle: dict) -> bool:
    return bool(mask_utils.area(rle))


def read_coco_instances(path: Path) -> InstanceSamples:
    """COCO instances JSON: every annotation's `segmentation` (polygons or RLE) is its object;
    `iscrowd` ones are kept as crowd regions (never trained on, ignored by the metrics as COCO
    does). Classes are the categories ordered by id."""
    coco = load_coco(path)
    index = coco.class_index
    samples = InstanceSamples([], [], [], [], [str(c["name"]) for c in coco.categories])
    for image_id, img in coco.images.items():
        width, height = coco.image_size(img)
        objects, labels, crowd = [], [], []
        for ann in coco.annotations[image_id]:
            rle = annotation_rle(ann, width, height, f"{coco.where(ann)} ({img['file_name']})")
            if not _has_pixels(rle):
                samples.dropped += 1
                continue
            objects.append(rle)
            labels.append(index[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
        _append(samples, str(coco.image_path(img)), objects, labels, crowd)
    return samples


def read_yolo_instances(path: Path) -> InstanceSamples:
    """ROOT/images/* + ROOT/labels/<stem>.txt, one `class x1 y1 x2 y2 ...` polygon per object
    (normalised to [0, 1], as Ultralytics writes them); an image without a label file has no
    objects. Class names from ROOT/classes.txt or the `names` of ROOT/data.yaml."""
    classes = yolo_classes(path)
    images = sorted(p for p in (path / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{path / 'images'}: no images")
    samples = InstanceSamples([], [], [], [], classes)
    for image in images:
        width, height = image_size(image)
        objects, labels = [], []
        for cls, polygon in read_polygons(path / "labels" / f"{image.stem}.txt", len(classes), width, height):
            rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
            if not _has_pixels(rle):
                samples.dropped += 1
                continue
            objects.append(rle)
            labels.append(cls)
        _append(samples, str(image), objects, labels, [False] * len(labels))
    return samples


READERS = {"coco": read_coco_instances, "yolo": read_yolo_instances}


def _append(samples: InstanceSamples, image: str, objects: list, labels: list, crowd: list) -> None:
    samples.images.append(image)
    samples.objects.append(objects)
    samples.labels.append(np.array(labels, np.int64))
    samples.crowd.append(np.array(crowd, bool))


def decode_masks(objects: list[dict], height: int, width: int) -> np.ndarray:
    """(k, H, W) uint8 masks of an image's RLEs."""
    if not objects:
        return np.zeros((0, height, width), np.uint8)
    return np.ascontiguousarray(mask_utils.decode(objects).transpose(2, 0, 1))


# ----------------------------------------------------------------------------- dataset


class InstanceDataset(JointDataset):
    """(image, target) through one joint transform; target = {'masks': (k, H, W) uint8, 'boxes':
    (k, 4) float xyxy enclosing each mask, 'labels': (k,) int64 with 0 = background (class i is
    i + 1), 'iscrowd': (k,) int64}. Objects the transform leaves without a pixel are dropped;
    with `crowd=False` (training) crowd regions are left out, as Mask R-CNN cannot learn them."""

    def __init__(self, samples, transform, crowd: bool = True, **kwargs):
        super().__init__(samples, transform, **kwargs)
        self.keep_crowd = crowd

    def transform_pair(self, image, i: int):
        width, height = image.size
        keep = np.ones(len(self.samples.labels[i]), bool) if self.keep_crowd else ~self.samples.crowd[i]
        objects = [rle for rle, k in zip(self.samples.objects[i], keep, strict=True) if k]
        decoded = decode_masks(objects, height, width)
        if decoded.shape[1:] != (height, width):
            raise DataError(
                f"{self.samples.images[i]}: the image is {width}x{height}, its annotations' masks "
                f"{decoded.shape[2]}x{decoded.shape[1]}"
            )
        masks = tv_tensors.Mask(torch.from_numpy(decoded))
        image, masks = self.transform(image, masks)
        masks = masks.as_subclass(torch.Tensor)
        present = masks.flatten(1).any(1).bool()
        masks = masks[present]
        boxes = masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])  # pixel edges, not centres
        return image.as_subclass(torch.Tensor), {
            "masks": masks,
            "boxes": boxes,
            "labels": torch.from_numpy(self.samples.labels[i][keep])[present] + 1,
            "iscrowd": torch.from_numpy(self.samples.crowd[i][keep])[present].long(),
        }
