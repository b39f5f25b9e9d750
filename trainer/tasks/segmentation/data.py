"""Segmentation data: the `maskfolder` format (ROOT/images/*.png|jpg + ROOT/masks/<stem>.png of
class indices, `ignore_index` = not labelled, optional ROOT/classes.txt), the dataset applying
joint image+mask transforms (torchvision.transforms.v2 with tv_tensors.Mask), and its collate."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from trainer.components.loader import JointDataset
from trainer.errors import DataError
from trainer.registry import DATASET_FORMATS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CLASSES_FILE = "classes.txt"


@dataclass
class MaskSamples:
    images: list[str]
    masks: list[str]
    max_index: list[int] = field(default_factory=list)  # largest labelled class index per mask
    root: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> MaskSamples:
        pick = [int(i) for i in idx]
        return MaskSamples(
            [self.images[i] for i in pick],
            [self.masks[i] for i in pick],
            [self.max_index[i] for i in pick],
            self.root,
        )


def read_mask(path: str | Path) -> np.ndarray:
    """A mask PNG as (H, W) uint8 class indices; it must be single-channel (L or P mode)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise DataError(f"{path}: mask must be a single-channel PNG of class indices, not {img.mode}")
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: cannot read mask ({exc})") from exc


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc


def _check_pair(image: Path, mask: Path, ignore_index: int) -> int:
    """The mask's largest labelled index, after checking it exists and matches its image's size."""
    if not mask.is_file():
        raise DataError(f"{image}: no mask {mask}")
    values = read_mask(mask)
    width, height = _image_size(image)
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


def read_classes(samples: MaskSamples) -> list[str]:
    """ROOT/classes.txt (one name per line), else the indices 0..max found in the masks."""
    listing = Path(samples.root, CLASSES_FILE)
    if listing.is_file():
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        if not names:
            raise DataError(f"{listing}: no class names")
        return names
    return [str(i) for i in range(max(samples.max_index, default=0) + 1)]


def check_class_indices(samples: MaskSamples, classes: list[str]) -> None:
    for mask, top in zip(samples.masks, samples.max_index, strict=True):
        if top >= len(classes):
            raise DataError(
                f"{mask}: class index {top} is beyond the {len(classes)} classes (0..{len(classes) - 1})"
            )


# ----------------------------------------------------------------------------- dataset


class MaskDataset(JointDataset):
    """(image, mask) pairs through one joint transform (masks as tv_tensors.Mask)."""

    def transform_pair(self, image, i: int):
        mask = tv_tensors.Mask(torch.from_numpy(read_mask(self.samples.masks[i]).copy()))
        return self.transform(image, mask)


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
