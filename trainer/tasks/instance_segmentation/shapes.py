"""The instance segmentation example data: shapes on textured backgrounds that touch and
overlap (later ones on top, so an object's mask is what stays visible of it), written as COCO
instances files with one RLE per object (OUT/<split>/annotations.json + OUT/<split>/images/)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from trainer.components.synthetic import SHAPES, draw_shape, texture

MIN_VISIBLE = 0.3  # an object less visible than this (of its own area) is not drawn


def instance_scene(
    rng: np.random.Generator, size: int, classes: tuple[str, ...] = SHAPES, max_objects: int = 4
):
    """A textured background with one to `max_objects` shapes, each placed near the previous
    ones so that they touch or overlap. Returns (RGB image, [(class index, (H, W) bool visible
    mask)...])."""
    background = texture(rng, size)
    img = Image.fromarray(background)
    draw = ImageDraw.Draw(img)
    contrast = 255 - background.reshape(-1, 3).mean(axis=0)
    width = max(1, size // 32)
    objects: list[tuple[int, np.ndarray]] = []
    for n in range(int(rng.integers(1, max_objects + 1))):
        r = rng.uniform(0.12, 0.22) * size
        if n and rng.random() < 0.7:  # next to an earlier object, from touching to half covering it
            k0, m0 = objects[int(rng.integers(len(objects)))]
            ys, xs = np.nonzero(m0)
            angle = rng.uniform(0, 2 * math.pi)
            cx, cy = xs.mean() + 1.5 * r * math.cos(angle), ys.mean() + 1.5 * r * math.sin(angle)
            cx, cy = float(np.clip(cx, r, size - r)), float(np.clip(cy, r, size - r))
        else:
            cx, cy = rng.uniform(r, size - r, 2)
        k = int(rng.integers(len(classes)))
        angle = rng.uniform(0, 2 * math.pi)
        alone = Image.new("L", (size, size), 0)
        draw_shape(ImageDraw.Draw(alone), classes[k], cx, cy, r, angle, 1, 1, width)
        mask = np.asarray(alone, bool)
        covered = [(c, m & ~mask) for c, m in objects]
        if any(m.sum() < MIN_VISIBLE * o.sum() for (_, m), (_, o) in zip(covered, objects, strict=True)):
            continue  # it would hide an object almost entirely
        color = tuple(int(v) for v in np.clip(contrast + rng.uniform(-40, 40, 3), 0, 255))
        draw_shape(draw, classes[k], cx, cy, r, angle, color, tuple(255 - v for v in color), width)
        objects = [*covered, (k, mask)]
    return img, objects


def shapes_instances(
    out: str | Path,
    n_train: int = 400,
    n_val: int = 100,
    size: int = 64,
    seed: int = 0,
    classes: tuple[str, ...] = SHAPES,
) -> dict[str, int]:
    """COCO instances files: category ids start at 1, each object's segmentation a compressed
    RLE of its visible pixels, bbox [x, y, width, height] around them."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    for split, count in (("train", n_train), ("val", n_val)):
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            img, objects = instance_scene(rng, size, classes)
            name = f"{i:05d}.png"
            img.save(out / split / "images" / name)
            images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
            for k, mask in objects:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": k + 1,
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                        "area": float(mask_utils.area(rle)),
                        "iscrowd": 0,
                    }
                )
        doc = {"images": images, "annotations": annotations, "categories": categories}
        (out / split / "annotations.json").write_text(json.dumps(doc))
    return {"train": n_train, "val": n_val}
