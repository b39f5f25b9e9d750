"""The detection example data: non-overlapping shapes on textured backgrounds with COCO
instances files (OUT/<split>/annotations.json + OUT/<split>/images/)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from trainer.components.synthetic import SHAPES, draw_shape, texture


def detection_scene(
    rng: np.random.Generator, size: int, classes: tuple[str, ...] = SHAPES, max_objects: int = 3
):
    """A textured background with one to `max_objects` shapes that do not overlap, and their
    tight boxes. Returns (RGB image, [(class index, [x1, y1, x2, y2])...])."""
    background = texture(rng, size)
    img = Image.fromarray(background)
    draw = ImageDraw.Draw(img)
    contrast = 255 - background.reshape(-1, 3).mean(axis=0)
    width = max(1, size // 32)
    objects: list[tuple[int, list[float]]] = []
    placed: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            r = rng.uniform(0.1, 0.22) * size
            cx, cy = rng.uniform(r + 1, size - r - 1, 2)
            if all(math.hypot(cx - x, cy - y) > r + q + 2 for x, y, q in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        k = int(rng.integers(len(classes)))
        angle = rng.uniform(0, 2 * math.pi)
        color = tuple(int(v) for v in np.clip(contrast + rng.uniform(-40, 40, 3), 0, 255))
        draw_shape(draw, classes[k], cx, cy, r, angle, color, tuple(255 - v for v in color), width)
        alone = Image.new("L", (size, size), 0)
        draw_shape(ImageDraw.Draw(alone), classes[k], cx, cy, r, angle, 1, 1, width)
        x1, y1, x2, y2 = alone.getbbox()
        objects.append((k, [float(x1), float(y1), float(x2), float(y2)]))
    return img, objects


def shapes_detection(
    out: str | Path,
    n_train: int = 400,
    n_val: int = 100,
    size: int = 64,
    seed: int = 0,
    classes: tuple[str, ...] = SHAPES,
) -> dict[str, int]:
    """COCO instances files: category ids start at 1, bbox is [x, y, width, height]."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    for split, count in (("train", n_train), ("val", n_val)):
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            img, objects = detection_scene(rng, size, classes)
            name = f"{i:05d}.png"
            img.save(out / split / "images" / name)
            images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
            for k, (x1, y1, x2, y2) in objects:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": k + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
        doc = {"images": images, "annotations": annotations, "categories": categories}
        (out / split / "annotations.json").write_text(json.dumps(doc))
    return {"train": n_train, "val": n_val}
