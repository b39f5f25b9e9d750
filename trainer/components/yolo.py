"""YOLO label folders, shared by the tasks that read them: the class names (ROOT/classes.txt or
the `names` of ROOT/data.yaml) and segmentation labels (one object per line: `class x1 y1 x2 y2
...`, a polygon normalised to [0, 1], as Ultralytics writes them), checked with errors naming
the file and the line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml

from trainer.components.coco import COCO_FILE, annotation_mask, check_segmentation
from trainer.errors import DataError

TOLERANCE = 0.01  # normalised coordinates may overshoot [0, 1] by this much (rounding in exports)


def coco_or_yolo(path: str | Path) -> str | None:
    """'coco' for a COCO instances JSON (or a folder holding annotations.json), 'yolo' for a
    folder with images/ and labels/, else None."""
    path = Path(path)
    if path.suffix == ".json" or (path / COCO_FILE).is_file():
        return "coco"
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return "yolo"
    return None


def yolo_classes(root: Path) -> list[str]:
    listing, spec = root / "classes.txt", root / "data.yaml"
    if listing.is_file():
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    elif spec.is_file():
        names = (yaml.safe_load(spec.read_text()) or {}).get("names", [])
        names = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    else:
        raise DataError(f"{root}: no classes.txt or data.yaml with the class names")
    if not names:
        raise DataError(f"{root}: no class names")
    return [str(n) for n in names]


def label_lines(file: Path) -> Iterator[tuple[str, list[str]]]:
    """(`file:line`, the line's fields) for each non-empty line of a label file."""
    for n, line in enumerate(file.read_text().splitlines(), start=1):
        if line.strip():
            yield f"{file}:{n}", line.split()


def read_polygons(file: Path, num_classes: int, width: int, height: int) -> list[tuple[int, list[float]]]:
    """(class, pixel x1, y1, ...) per object of a segmentation label file for a `width` x
    `height` image; none when the file is missing (an image without objects). A DataError
    naming `file:line` for a line that is not a class and at least 3 points on the image with
    some area, or an unknown class."""
    if not file.is_file():
        return []
    objects = []
    for where, parts in label_lines(file):
        try:
            cls, coords = int(parts[0]), [float(v) for v in parts[1:]]
        except ValueError:
            raise DataError(f"{where}: expected 'class x1 y1 x2 y2 ...', got '{' '.join(parts)}'") from None
        if not 0 <= cls < num_classes:
            raise DataError(f"{where}: unknown class id {cls} ({num_classes} classes: 0..{num_classes - 1})")
        if len(coords) % 2 or len(coords) < 6:
            raise DataError(
                f"{where}: a polygon needs at least 3 points (x y pairs), got {len(coords)} values"
            )
        values = np.asarray(coords)
        if values.min() < -TOLERANCE or values.max() > 1 + TOLERANCE:
            raise DataError(f"{where}: coordinates must be normalised to [0, 1]")
        pixels = (values.reshape(-1, 2).clip(0, 1) * (width, height)).flatten().tolist()
        check_segmentation({"segmentation": [pixels]}, width, height, where)
        objects.append((cls, pixels))
    return objects


def polygon_class_mask(objects: list[tuple[int, list[float]]], width: int, height: int) -> np.ndarray:
    """(H, W) uint8 class indices of `read_polygons`' objects: 0 = background, class k = k + 1,
    objects drawn largest first (COCO's rasteriser: the same pixels as a COCO polygon)."""
    out = np.zeros((height, width), np.uint8)
    drawn = [(annotation_mask({"segmentation": [p]}, width, height, "polygon"), c) for c, p in objects]
    for mask, cls in sorted(drawn, key=lambda pair: -int(pair[0].sum())):
        out[mask] = cls + 1
    return out
