"""Segmentation data: the `maskfolder` format (ROOT/images/*.png|jpg + ROOT/masks/<stem>.png of
class indices, `ignore_index` = not labelled, optional ROOT/classes.txt), COCO instances files
(polygons or RLE, drawn into class masks) and Hugging Face datasets with an image and a mask
column, the dataset applying joint image+mask transforms
(torchvision.transforms.v2 with tv_tensors.Mask), and its collate."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from trainer.components import hf_data
from trainer.components.coco import COCO_FILE, check_segmentation, load_coco, semantic_mask
from trainer.components.loader import JointDataset
from trainer.components.remote_data import fetched, header
from trainer.components.yolo import polygon_class_mask, read_polygons, yolo_classes
from trainer.errors import DataError
from trainer.registry import DATASET_FORMATS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CLASSES_FILE = "classes.txt"


@dataclass
class MaskSamples:
    images: list[str]  # files, or the names of dataset rows (`rows` reads those)
    masks: list[str]  # files, or names (`rows` or `drawn` gives those masks)
    max_index: list[int] = field(default_factory=list)  # largest labelled class index per mask
    root: str = ""
    rows: RowPairs | None = None  # images and masks held in a dataset's rows
    drawn: DrawnMasks | None = None  # masks drawn from a COCO file's annotations
    classes: list[str] | None = None  # the class names, when the format names them

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> MaskSamples:
        pick = [int(i) for i in idx]
        rows = self.rows.subset(pick) if self.rows is not None else None
        drawn = self.drawn.subset(pick) if self.drawn is not None else None
        return MaskSamples(
            [self.images[i] for i in pick],
            [self.masks[i] for i in pick],
            [self.max_index[i] for i in pick],
            self.root,
            rows,
            drawn,
            self.classes,
        )

    def image_source(self, i: int) -> str | bytes:
        if self.rows is not None:
            return self.rows.images.read(self.rows.index[i], self.images[i])
        return fetched(self.images[i])

    def mask_source(self, i: int) -> str | bytes | np.ndarray:
        if self.rows is not None:
            return self.rows.masks.read(self.rows.index[i], self.masks[i])
        if self.drawn is not None:
            return self.drawn.draw(i)
        return fetched(self.masks[i])


@dataclass
class RowPairs:
    """The image and mask readers of a Hugging Face dataset's split, and each sample's row."""

    images: hf_data.RowImages
    masks: hf_data.RowImages
    index: list[int]

    def subset(self, pick: list[int]) -> RowPairs:
        return RowPairs(self.images, self.masks, [self.index[i] for i in pick])


@dataclass
class DrawnMasks:
    """Annotations drawn into each sample's class mask when it is read: `draw_one(key)` with
    the sample's key (a COCO image id; a YOLO label's polygons and image size)."""

    draw_one: Callable[[Any], np.ndarray]
    keys: list

    def subset(self, pick: list[int]) -> DrawnMasks:
        return DrawnMasks(self.draw_one, [self.keys[i] for i in pick])

    def draw(self, i: int) -> np.ndarray:
        return self.draw_one(self.keys[i])


def read_mask(source: str | Path | bytes | np.ndarray, name: str | None = None) -> np.ndarray:
    """A mask PNG (a file, or its bytes named `name`) as (H, W) uint8 class indices; it must be
    single-channel (L or P mode). A drawn mask (an array) is returned as it is."""
    if isinstance(source, np.ndarray):
        return source
    path = name or "<bytes>" if isinstance(source, bytes) else source
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            if img.mode not in ("L", "P"):
                raise DataError(f"{path}: mask must be a single-channel PNG of class indices, not {img.mode}")
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: cannot read mask ({exc})") from exc


def _image_size(source: Path | io.BytesIO, name: str | None = None) -> tuple[int, int]:
    try:
        with Image.open(source) as img:
            return img.size
    except OSError as exc:
        raise DataError(f"{name or source}: cannot read image ({exc})") from exc


def _check_pair(image: Path, mask: Path, ignore_index: int) -> int:
    """The mask's largest labelled index, after checking it exists and matches its image's size."""
    if not mask.is_file():
        raise DataError(f"{image}: no mask {mask}")
    values = read_mask(fetched(str(mask)), str(mask))
    width, height = _image_size(header(image), str(image))
    if values.shape != (height, width):
        raise DataError(
            f"{mask}: mask is {values.shape[1]}x{values.shape[0]} "
            f"but its image {image.name} is {width}x{height}"
        )
    labelled = values[values != ignore_index]
    return int(labelled.max()) if labelled.size else -1


@DATASET_FORMATS.register("maskfolder")
def read_maskfolder(root: str | Path, ignore_index: int = 255) -> MaskSamples:
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataError(f"{root}: no {folder.name}/ folder (mask folder layout: images/ + masks/)")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{images_dir}: no .png/.jpg images")
    masks = [masks_dir / f"{p.stem}.png" for p in images]
    max_index = [_check_pair(i, m, ignore_index) for i, m in zip(images, masks, strict=True)]
    return MaskSamples([str(p) for p in images], [str(p) for p in masks], max_index, str(root))


def read_coco_masks(path: str | Path, ignore_index: int = 255) -> MaskSamples:
    """A COCO instances file (or a folder holding annotations.json, images next to it or in
    images/): each image's objects (polygons or RLE) drawn into a class mask when read, classes
    `background` + the categories by id, crowd regions not labelled (`ignore_index`). Every
    annotation is checked here (`check_segmentation`), naming it, before anything trains."""
    coco = load_coco(path)
    index = coco.class_index
    images, names, max_index = [], [], []
    for image_id, img in coco.images.items():
        width, height = coco.image_size(img)
        top = 0
        for ann in coco.annotations[image_id]:
            check_segmentation(ann, width, height, coco.where(ann))
            if not ann.get("iscrowd", 0):
                top = max(top, index[ann["category_id"]] + 1)
        images.append(str(coco.image_path(img)))
        names.append(f"{coco.file}: image {image_id}")
        max_index.append(top)
    classes = ["background", *(str(c["name"]) for c in coco.categories)]
    drawn = DrawnMasks(functools.partial(semantic_mask, coco, ignore_index=ignore_index), list(coco.images))
    return MaskSamples(images, names, max_index, str(coco.file.parent), drawn=drawn, classes=classes)


def read_yolo_masks(root: str | Path, ignore_index: int = 255) -> MaskSamples:
    """ROOT/images/* + ROOT/labels/<stem>.txt, one object per line, `class x1 y1 x2 y2 ...` (a
    polygon normalised to [0, 1], Ultralytics' segmentation labels), class names from
    ROOT/classes.txt or ROOT/data.yaml: classes `background` + those names, objects drawn into
    a class mask when read (largest first). Every line is checked here, naming file and line."""
    root = Path(root)
    names = yolo_classes(root)
    images = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{root / 'images'}: no .png/.jpg images")
    keys, max_index = [], []
    for image in images:
        width, height = _image_size(header(image), str(image))
        objects = read_polygons(root / "labels" / f"{image.stem}.txt", len(names), width, height)
        keys.append((objects, width, height))
        max_index.append(max((cls + 1 for cls, _ in objects), default=0))
    labels = [str(root / "labels" / f"{p.stem}.txt") for p in images]
    classes = ["background", *names]
    return MaskSamples(
        [str(p) for p in images], labels, max_index, drawn=DrawnMasks(_draw_polygons, keys), classes=classes
    )


def _draw_polygons(key: tuple) -> np.ndarray:
    return polygon_class_mask(*key)


MASK_READERS = {"coco": read_coco_masks, "yolo": read_yolo_masks, "maskfolder": read_maskfolder}


def read_masks(path: str, fmt: str = "auto", ignore_index: int = 255) -> MaskSamples:
    """A COCO file, a YOLO segmentation folder or a mask folder: `fmt`, or for auto COCO when
    `path` is a .json or a folder holding annotations.json, YOLO for a folder with images/ and
    labels/, else a mask folder."""
    if fmt == "auto":
        folder = Path(path)
        if path.endswith(".json") or (folder / COCO_FILE).is_file():
            fmt = "coco"
        else:
            fmt = "yolo" if (folder / "images").is_dir() and (folder / "labels").is_dir() else "maskfolder"
    return MASK_READERS[fmt](path, ignore_index)


def read_hf_masks(
    source: str, split: str | None, options: hf_data.HfOptions, ignore_index: int = 255
) -> MaskSamples:
    """A Hugging Face dataset's split with an image and a mask column: each mask is read once
    here (as the mask folder's are) for its largest class index and its size."""
    names, images, masks = hf_data.read_image_pairs(source, split, options)
    max_index = []
    for row, name in enumerate(names):
        values = read_mask(masks.read(row, name), name)
        width, height = _image_size(io.BytesIO(images.read(row, name)), name)
        if values.shape != (height, width):
            raise DataError(
                f"{name}: mask is {values.shape[1]}x{values.shape[0]} but its image is {width}x{height}"
            )
        labelled = values[values != ignore_index]
        max_index.append(int(labelled.max()) if labelled.size else -1)
    local = source if Path(source).is_dir() else ""
    return MaskSamples(names, names, max_index, local, RowPairs(images, masks, list(range(len(names)))))


def read_classes(samples: MaskSamples, *others: MaskSamples) -> list[str]:
    """The format's own names (COCO's categories), else ROOT/classes.txt (one name per line),
    else the indices 0..max found in the masks of `samples` and `others`."""
    if samples.classes:
        return samples.classes
    listing = Path(samples.root, CLASSES_FILE)
    if samples.root and listing.is_file():
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        if not names:
            raise DataError(f"{listing}: no class names")
        return names
    top = max((i for split in (samples, *others) for i in split.max_index), default=0)
    return [str(i) for i in range(top + 1)]


def check_class_indices(samples: MaskSamples, classes: list[str]) -> None:
    for mask, top in zip(samples.masks, samples.max_index, strict=True):
        if top >= len(classes):
            raise DataError(
                f"{mask}: class index {top} is beyond the {len(classes)} classes (0..{len(classes) - 1})"
            )


# ----------------------------------------------------------------------------- dataset


class MaskDataset(JointDataset):
    """(image, mask) pairs through one joint transform (masks as tv_tensors.Mask)."""

    def image_source(self, i: int) -> str | bytes:
        return self.samples.image_source(i)

    def transform_pair(self, image, i: int):
        values = read_mask(self.samples.mask_source(i), self.samples.masks[i])
        return self.transform(image, tv_tensors.Mask(torch.from_numpy(values.copy())))


class MaskCollate:
    """Stacks images (N, 3, H, W) and masks (N, H, W) as int64; drops and counts skipped samples."""

    def __call__(self, batch):
        good = [item for item in batch if item is not None]
        skipped = len(batch) - len(good)
        if not good:
            return None, None, skipped
        images = torch.stack([img.as_subclass(torch.Tensor) for img, _ in good])
        masks = torch.stack([mask.as_subclass(torch.Tensor) for _, mask in good]).long()
        return images, masks, skipped
