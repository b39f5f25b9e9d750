"""Prepared datasets: a downscaled copy of an image-classification dataset (an ImageFolder tree,
or a folder with CSV manifests whose paths are relative to it), so each training step decodes a
few hundred thousand pixels instead of a camera's twelve million. Images keep their relative
paths, names and formats; manifests and other text files are copied as they are; nothing is
upscaled. Box and mask datasets (COCO JSON, YOLO labels, mask folders) hold pixel geometry and
are refused rather than silently broken."""

from __future__ import annotations

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
GEOMETRY = ("*.json", "labels", "masks")  # what would need its coordinates rescaled


def prepare_images(src: Path, out: Path, short_side: int, quality: int = 95) -> dict[str, int]:
    """Write `src`'s images to `out` with their shorter side at most `short_side` pixels (JPEGs
    decoded at reduced DCT scale first); returns counts of resized, kept and copied files."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(f"{src}: not a folder")
    for pattern in GEOMETRY:
        found = next(src.rglob(pattern), None)
        if found is not None:
            raise DataError(
                f"{found}: box or mask data (COCO JSON, YOLO labels, mask folders) cannot be prepared "
                "yet; only image-classification folders and CSV manifests"
            )
    if out.resolve().is_relative_to(src.resolve()):
        raise DataError(f"--out: {out} is inside {src}")
    counts = {"resized": 0, "kept": 0, "copied": 0}
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        target = out / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() not in _FORMATS:
            shutil.copyfile(path, target)
            counts["copied"] += 1
            continue
        if min(_header_size(path)) <= short_side:
            shutil.copyfile(path, target)  # already small enough: the original bytes
            counts["kept"] += 1
            continue
        img = open_image(path, min_side=short_side)  # bounded decode, upright, at reduced DCT scale
        scale = short_side / min(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        fmt = _FORMATS[path.suffix.lower()]
        img.save(target, fmt, **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
        counts["resized"] += 1
    return counts


def _header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError):
        open_image(path)  # raises BadImageError naming the file
        raise
