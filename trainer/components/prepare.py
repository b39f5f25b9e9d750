"""Prepared datasets: a downscaled copy of a dataset folder (ImageFolder trees and CSV
manifests, COCO and YOLO detection sets, segmentation mask folders), so each training step
decodes a few hundred thousand pixels instead of a camera's twelve million. Images keep their
relative paths, names and formats; nothing is upscaled; masks and boxes follow their images
exactly (masks by nearest neighbour, COCO coordinates rescaled; YOLO's are relative already);
manifests and other files are copied as they are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image

from trainer.components.images import open_image
from trainer.errors import DataError

_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".bmp": "BMP",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
MASK_FOLDER = "masks"  # segmentation masks (class indices): resized by nearest neighbour


def prepare_images(src: Path, out: Path, short_side: int, quality: int = 95) -> dict[str, int]:
    """Write `src`'s images to `out` with their shorter side at most `short_side` pixels (JPEGs
    decoded at reduced DCT scale first); returns counts of resized, kept and copied files and of
    rescaled COCO files. Masks (files under a `masks/` folder) resize by nearest neighbour to
    their image's new size; COCO instances JSONs get their images' sizes, boxes, areas and
    polygons rescaled; YOLO labels (normalised coordinates) and manifests are copied."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(f"{src}: not a folder")
    if out.resolve().is_relative_to(src.resolve()):
        raise DataError(f"--out: {out} is inside {src}")
    counts = {"resized": 0, "kept": 0, "copied": 0, "coco": 0}
    scales: dict[Path, tuple[float, float, int, int]] = {}  # resized image: sx, sy, new size
    files = sorted(p for p in src.rglob("*") if p.is_file())
    for path in files:
        target = out / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() not in _FORMATS:
            if path.suffix.lower() != ".json":
                shutil.copyfile(path, target)
                counts["copied"] += 1
            continue
        width, height = _header_size(path)
        if min(width, height) <= short_side:
            shutil.copyfile(path, target)  # already small enough: the original bytes
            counts["kept"] += 1
            continue
        fmt, size = _FORMATS[path.suffix.lower()], target_size(width, height, short_side)
        if MASK_FOLDER in path.relative_to(src).parts[:-1]:
            with Image.open(path) as mask:  # class indices: no interpolation, mode and palette kept
                mask.resize(size, Image.Resampling.NEAREST).save(target, fmt)
        else:
            img = open_image(path, min_side=short_side)  # bounded decode, upright, at reduced DCT scale
            if (img.width > img.height) != (width > height):
                size = size[::-1]  # turned upright by its EXIF orientation
            img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
            img.save(target, fmt, **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
            scales[path.resolve()] = (size[0] / width, size[1] / height, *size)
        counts["resized"] += 1
    for path in (p for p in files if p.suffix.lower() == ".json"):
        counts["coco"] += rescale_coco(path, out / path.relative_to(src), scales)
    return counts


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def rescale_coco(path: Path, target: Path, scales: dict[Path, tuple[float, float, int, int]]) -> int:
    """Copy a JSON file; a COCO instances file gets each resized image's width and height, and
    its annotations' boxes, areas and polygons, scaled (images looked up as `read_coco` does:
    next to the JSON, then in its images/ folder). Returns 1 for a rescaled COCO file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read JSON ({exc})") from exc
    if not (isinstance(data, dict) and isinstance(data.get("images"), list) and "annotations" in data):
        shutil.copyfile(path, target)
        return 0
    per_image = {}
    for image in data["images"]:
        for folder in (path.parent, path.parent / "images"):
            scale = scales.get((folder / str(image.get("file_name", ""))).resolve())
            if scale is not None:
                per_image[image["id"]] = scale
                image["width"], image["height"] = scale[2], scale[3]
                break
    for n, ann in enumerate(data["annotations"]):
        scale = per_image.get(ann.get("image_id"))
        if scale is None:
            continue
        sx, sy = scale[0], scale[1]
        if "bbox" in ann:
            x, y, w, h = ann["bbox"]
            ann["bbox"] = [x * sx, y * sy, w * sx, h * sy]
        if "area" in ann:
            ann["area"] = ann["area"] * sx * sy
        segmentation = ann.get("segmentation")
        if isinstance(segmentation, dict):
            raise DataError(
                f"{path}: annotation {ann.get('id', f'#{n}')} has an RLE mask, which cannot be rescaled; "
                "prepare with polygons or boxes only"
            )
        if isinstance(segmentation, list):
            ann["segmentation"] = [
                [v * (sx if i % 2 == 0 else sy) for i, v in enumerate(polygon)] for polygon in segmentation
            ]
    target.write_text(json.dumps(data))
    return 1


def _header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError):
        open_image(path)  # raises BadImageError naming the file
        raise
