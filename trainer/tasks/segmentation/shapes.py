"""The segmentation example data: shapes on textured backgrounds with class-index masks
(OUT/<split>/images, OUT/<split>/masks, OUT/<split>/classes.txt)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from trainer.components.synthetic import SHAPES, draw_shape, texture


def segmentation_scene(rng: np.random.Generator, size: int, classes: tuple[str, ...] = SHAPES):
    """A textured background with one to three shapes (later ones on top) and its mask: 0 is
    background, shape kind k is class k + 1. Returns (RGB image, L-mode mask)."""
    background = texture(rng, size)
    img = Image.fromarray(background)
    mask = Image.new("L", (size, size), 0)
    draw, draw_mask = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    contrast = 255 - background.reshape(-1, 3).mean(axis=0)
    width = max(1, size // 32)
    for _ in range(rng.integers(1, 4)):
        k = int(rng.integers(len(classes)))
        r = rng.uniform(0.15, 0.3) * size
        cx, cy = rng.uniform(r, size - r, 2)
        angle = rng.uniform(0, 2 * math.pi)
        color = tuple(int(v) for v in np.clip(contrast + rng.uniform(-40, 40, 3), 0, 255))
        outline = tuple(255 - v for v in color)
        draw_shape(draw, classes[k], cx, cy, r, angle, color, outline, width)
        draw_shape(draw_mask, classes[k], cx, cy, r, angle, k + 1, k + 1, width)
    return img, mask


def shapes_segmentation(
    out: str | Path,
    n_train: int = 400,
    n_val: int = 100,
    size: int = 64,
    seed: int = 0,
    classes: tuple[str, ...] = SHAPES,
) -> dict[str, int]:
    out = Path(out)
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        for folder in ("images", "masks"):
            (out / split / folder).mkdir(parents=True, exist_ok=True)
        (out / split / "classes.txt").write_text("\n".join(("background", *classes)) + "\n")
        for i in range(count):
            img, mask = segmentation_scene(rng, size, classes)
            img.save(out / split / "images" / f"{i:05d}.png")
            mask.save(out / split / "masks" / f"{i:05d}.png")
    return {"train": n_train, "val": n_val}
