"""Serving Mask R-CNN: the decoded image as float [0, 1] at its own size (the model resizes and
normalises inside), the backend called on the list of a batch's images; per object above the
score threshold its box in the image's pixels, label, score, its mask as a COCO RLE (pycocotools'
compressed `counts` string, `size` [height, width]) and its area in pixels.

A very elongated image is padded at the bottom or right as for detection (`padded_shape`), so
it keeps a few pixels across inside the model; boxes are clipped and masks cropped to the image."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from trainer.components.deploy import padded_shape
from trainer.tasks.instance_segmentation.metrics import MASK_THRESHOLD


def rle(mask: np.ndarray) -> dict:
    """A (H, W) bool mask as COCO's compressed RLE, JSON-ready."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


class InstanceHandler:
    def __init__(self, meta: dict, score_threshold: float, transform: Callable):
        self.classes, self.score_threshold, self.transform = meta["classes"], score_threshold, transform
        p = meta["preprocessing"]
        self.sizes = (p["min_size"], p["max_size"])

    def prepare(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        pixels = self.transform(image).numpy()
        height, width = padded_shape(*pixels.shape[1:], *self.sizes)
        pixels = np.pad(pixels, ((0, 0), (0, height - pixels.shape[1]), (0, width - pixels.shape[2])))
        return pixels, image.size

    def run(self, backend: Callable, inputs: list[np.ndarray]) -> list:
        return backend(inputs)

    def answer(self, output: tuple[np.ndarray, ...], size: tuple[int, int]) -> dict:
        boxes, labels, scores, masks = output
        keep = scores >= self.score_threshold
        width, height = size
        boxes = np.clip(boxes, 0, [width, height, width, height])  # padding is not the image
        objects = []
        for b, k, s, m in zip(boxes[keep], labels[keep], scores[keep], masks[keep], strict=True):
            mask = m[:height, :width] >= MASK_THRESHOLD
            objects.append(
                {
                    "label": self.classes[int(k) - 1],
                    "index": int(k) - 1,
                    "score": float(s),
                    "box": [float(v) for v in b],
                    "mask": rle(mask),
                    "area": int(mask.sum()),
                }
            )
        return {"instances": objects, "width": width, "height": height}

    def health_input(self) -> list[np.ndarray]:
        return [np.zeros((3, 64, 64), np.float32)]
