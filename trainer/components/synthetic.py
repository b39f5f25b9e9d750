"""Example data: scikit-learn's real handwritten digits, shapes on textured backgrounds in the
ImageFolder layout (OUT/train/<class>/*.png, OUT/val/...), a shifted domain for `vft eval`, and
the drawing helpers each task's scene generator (`trainer/tasks/<task>/shapes.py`) uses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross")


def _write(out: Path, split: str, label: str, index: int, image: Image.Image) -> None:
    folder = out / split / label
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / f"{index:05d}.png")


def digits(out: str | Path, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
    """The 1,797 8x8 digits that ship with scikit-learn, upscaled to `size` pixels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    out = Path(out)
    data = load_digits()
    images = (data.images / 16.0 * 255).astype(np.uint8)
    idx = np.arange(len(images))
    train_idx, val_idx = train_test_split(
        idx, test_size=val_fraction, random_state=seed, stratify=data.target
    )
    for split, indices in (("train", train_idx), ("val", val_idx)):
        for i in indices:
            img = Image.fromarray(images[i], mode="L").resize((size, size), Image.Resampling.BILINEAR)
            _write(out, split, str(data.target[i]), int(i), img)
    return {"train": len(train_idx), "val": len(val_idx)}


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Noise, gradient or stripes, in random colours: the background the model must ignore."""
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == 0:
        base = rng.uniform(0, 1, (size, size, 1))
    elif kind == 1:
        angle = rng.uniform(0, 2 * math.pi)
        base = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    else:
        freq = rng.uniform(3, 10)
        base = (0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx + rng.uniform(-1, 1) * yy)))[..., None]
    c1 = rng.uniform(0, 255, 3)
    c2 = np.clip(c1 + rng.uniform(-60, 60, 3), 0, 255)
    img = c1 * (1 - base) + c2 * base + rng.normal(0, 10, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.pi / 4 + k * math.pi / 2, r) for k in range(4)]
    elif shape == "triangle":
        pts = [(math.pi / 2 + k * 2 * math.pi / 3, r) for k in range(3)]
    elif shape == "star":
        pts = [(math.pi / 2 + k * math.pi / 5, r if k % 2 == 0 else r * 0.45) for k in range(10)]
    else:  # cross
        w = 0.35
        corners = [
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
        ]
        pts = [(math.atan2(y, x), r * math.hypot(x, y) / math.sqrt(1 + w * w)) for x, y in corners]
    return [(cx + rad * math.cos(a + angle), cy - rad * math.sin(a + angle)) for a, rad in pts]


def shape_image(rng: np.random.Generator, label: str, size: int) -> Image.Image:
    background = texture(rng, size)
    img = Image.fromarray(background)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r, size - r, 2)
    contrast = 255 - background.reshape(-1, 3).mean(axis=0)  # the shape stands out from its background
    color = tuple(int(v) for v in np.clip(contrast + rng.uniform(-40, 40, 3), 0, 255))
    outline = tuple(255 - v for v in color)
    if label == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color, outline=outline, width=max(1, size // 32))
    else:
        draw.polygon(
            _polygon(label, cx, cy, r, rng.uniform(0, 2 * math.pi)),
            fill=color,
            outline=outline,
            width=max(1, size // 32),
        )
    return img


def draw_shape(draw: ImageDraw.ImageDraw, label: str, cx, cy, r, angle, fill, outline, width: int) -> None:
    if label == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=width)
    else:
        draw.polygon(_polygon(label, cx, cy, r, angle), fill=fill, outline=outline, width=width)


def shapes_classification(
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
        for i in range(count):
            label = classes[i % len(classes)]
            _write(out, split, label, i, shape_image(rng, label, size))
    return {"train": n_train, "val": n_val}


def shifted_domain(src: str | Path, out: str | Path, seed: int = 0) -> int:
    """Another domain for the same classes: every image of the ImageFolder tree `src`, its
    intensity used as the mask of a random bright colour over a random textured background
    (the digits' strokes recoloured on noise, gradients or stripes). Returns the image count."""
    src, out = Path(src), Path(out)
    rng = np.random.default_rng(seed)
    count = 0
    for path in sorted(src.rglob("*.png")):
        gray = np.asarray(Image.open(path).convert("L"), np.float32)[..., None] / 255
        side = max(gray.shape[:2])
        background = texture(rng, side)[: gray.shape[0], : gray.shape[1]] / 255 * 0.6
        colour = rng.uniform(0.6, 1.0, 3)
        pixels = background * (1 - gray) + colour * gray
        dest = out / path.relative_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 255).clip(0, 255).astype(np.uint8)).save(dest)
        count += 1
    return count
