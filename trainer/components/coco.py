"""COCO instances files, shared by the tasks that read them: the checked index (images,
annotations per image, categories by id) and object masks from polygons or RLE (pycocotools,
COCO's own encoder), with errors naming the file and the annotation id."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from trainer.components.remote_data import header
from trainer.errors import DataError

COCO_FILE = "annotations.json"


@dataclass
class CocoIndex:
    file: Path
    images: dict[int, dict]  # id -> the image's entry
    annotations: dict[int, list[dict]]  # image id -> its annotations, in file order
    categories: list[dict]  # ordered by id; a category's class index is its position

    @property
    def class_index(self) -> dict[int, int]:
        return {c["id"]: i for i, c in enumerate(self.categories)}

    def where(self, ann: dict) -> str:
        return f"{self.file}: annotation {ann.get('id', '?')}"

    def image_path(self, img: dict) -> Path:
        """The image's file, next to the JSON or in its images/ folder."""
        for folder in (self.file.parent, self.file.parent / "images"):
            if (folder / img["file_name"]).is_file():
                return folder / img["file_name"]
        raise DataError(
            f"{self.file}: image {img['id']}: {img['file_name']} not found next to the JSON or in images/"
        )

    def image_size(self, img: dict) -> tuple[int, int]:
        """(width, height) from the entry, else from the image's header."""
        if "width" in img and "height" in img:
            return int(img["width"]), int(img["height"])
        return image_size(self.image_path(img))


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image's header (a ranged read for an object-store placeholder)."""
    try:
        with Image.open(header(path)) as opened:
            return opened.size
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc


def load_coco(path: str | Path) -> CocoIndex:
    """A COCO instances JSON (or a folder holding annotations.json), checked: the three lists,
    every annotation's image and category known."""
    path = Path(path)
    file = path / COCO_FILE if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{file}: cannot read COCO annotations ({exc})") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{file}: no '{key}' list (not a COCO instances file)")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    known = {c["id"] for c in categories}
    images = {img["id"]: img for img in data["images"]}
    per_image: dict[int, list[dict]] = {i: [] for i in images}
    for n, ann in enumerate(data["annotations"]):
        where = f"{file}: annotation {ann.get('id', f'#{n}')}"
        if ann.get("image_id") not in images:
            raise DataError(f"{where}: image_id {ann.get('image_id')} is not in 'images'")
        if ann.get("category_id") not in known:
            raise DataError(
                f"{where}: unknown category_id {ann.get('category_id')} (categories: {sorted(known)})"
            )
        per_image[ann["image_id"]].append(ann)
    if not images:
        raise DataError(f"{file}: no images")
    return CocoIndex(file, images, per_image, categories)


def check_segmentation(ann: dict, width: int, height: int, where: str) -> None:
    """The annotation's `segmentation` is usable: polygons (a list of flat [x1, y1, ...] lists,
    pixel coordinates), each with at least 3 points, some area and no point off the image; or
    an RLE ({size, counts}, compressed or not) of the image's size. A DataError naming `where`."""
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        if not seg:
            raise DataError(f"{where}: empty segmentation")
        for polygon in seg:
            _check_polygon(polygon, width, height, where)
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [height, width]:
            raise DataError(
                f"{where}: RLE size {seg['size']} is not the image's [height, width] [{height}, {width}]"
            )
    else:
        raise DataError(f"{where}: segmentation must be a list of polygons or an RLE {{size, counts}}")


def annotation_rle(ann: dict, width: int, height: int, where: str) -> dict:
    """The annotation's object as one compressed RLE (pycocotools' encoding, `counts` bytes)."""
    check_segmentation(ann, width, height, where)
    seg = ann["segmentation"]
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in p] for p in seg], height, width))
    if isinstance(seg["counts"], list):
        try:
            return mask_utils.frPyObjects(seg, height, width)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: cannot read the RLE ({exc})") from exc
    counts = seg["counts"]
    return {"size": list(seg["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def annotation_mask(ann: dict, width: int, height: int, where: str) -> np.ndarray:
    """The annotation's object as an (H, W) bool mask, drawn as COCO draws it (pycocotools)."""
    rle = annotation_rle(ann, width, height, where)
    try:
        decoded = mask_utils.decode(rle)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: cannot decode the RLE ({exc})") from exc
    return decoded.astype(bool)


def _check_polygon(polygon, width: int, height: int, where: str) -> None:
    if not isinstance(polygon, list) or len(polygon) % 2 or len(polygon) < 6:
        count = len(polygon) if isinstance(polygon, list) else type(polygon).__name__
        raise DataError(f"{where}: a polygon needs at least 3 points (x, y pairs), got {count} values")
    try:
        points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise DataError(f"{where}: a polygon must be a flat list of x, y numbers") from None
    x, y = points[:, 0], points[:, 1]
    if x.min() < -1 or y.min() < -1 or x.max() > width + 1 or y.max() > height + 1:
        raise DataError(f"{where}: polygon point outside the {width}x{height} image")
    crossing = _crossing_edges(points)
    if crossing:
        (a, b), (c, d) = crossing
        raise DataError(
            f"{where}: self-intersecting polygon (edge {a}-{b} crosses edge {c}-{d}, points counted "
            "from 0); fix it in the labelling tool or split it into one polygon per part"
        )
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))  # shoelace
    if area < 1e-6:
        raise DataError(f"{where}: degenerate polygon (no area)")


def _crossing_edges(points: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The first pair of non-adjacent edges of the closed polygon that cross each other
    properly (touching at a point is allowed), or None."""
    n = len(points)
    if n < 4:
        return None
    start, end = points, np.roll(points, -1, axis=0)

    def side(p, q, r):  # sign of the turn p -> q -> r, for every pair (i, j)
        return np.sign(
            (q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1])
            - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0])
        )

    a, b = start[:, None], end[:, None]
    c, d = start[None, :], end[None, :]
    crosses = (side(a, b, c) * side(a, b, d) < 0) & (side(c, d, a) * side(c, d, b) < 0)
    i, j = np.triu_indices(n, k=2)
    hits = np.flatnonzero(crosses[i, j] & ((j + 1) % n != i))  # edge n-1 and edge 0 are adjacent
    if not len(hits):
        return None
    x, y = int(i[hits[0]]), int(j[hits[0]])
    return (x, (x + 1) % n), (y, (y + 1) % n)


def semantic_mask(index: CocoIndex, image_id: int, ignore_index: int) -> np.ndarray:
    """(H, W) uint8 class indices of one image: 0 = background, category k (by id order) =
    k + 1; crowd regions are `ignore_index` (COCO ignores them), objects painted largest first so
    a small object on a large one stays visible."""
    img = index.images[image_id]
    width, height = index.image_size(img)
    classes = index.class_index
    out = np.zeros((height, width), np.uint8)
    anns = index.annotations[image_id]
    for ann in [a for a in anns if a.get("iscrowd", 0)]:
        out[annotation_mask(ann, width, height, index.where(ann))] = ignore_index
    drawn = [(annotation_mask(a, width, height, index.where(a)), a) for a in anns if not a.get("iscrowd", 0)]
    for mask, ann in sorted(drawn, key=lambda pair: -int(pair[0].sum())):
        out[mask] = classes[ann["category_id"]] + 1
    return out
