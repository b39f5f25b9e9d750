"""Serving a detector: the decoded image as float [0, 1] at its own size (the detector resizes and
normalises inside), the backend called on the list of a batch's images; boxes in the image's
pixels, those under the score threshold left out.

A very elongated image (4000x3) would shrink to less than a pixel across inside the detector
(its resize keeps the aspect and caps the longer side at max_size): its shorter side is padded
with black, at the bottom or right, so it keeps `MIN_SIDE` pixels there (components/deploy.py
`padded_shape`); boxes stay in the image's own pixels and are clipped to it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from trainer.components.deploy import padded_shape


class DetectionHandler:
    def __init__(self, meta: dict, score_threshold: float, transform: Callable):
        self.classes, self.score_threshold, self.transform = meta["classes"], score_threshold, transform
        p = meta["preprocessing"]
        self.sizes = None if p.get("fixed_size") else (p["min_size"], p["max_size"])

    def prepare(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        pixels = self.transform(image).numpy()
        if self.sizes is not None:
            height, width = padded_shape(*pixels.shape[1:], *self.sizes)
            pixels = np.pad(pixels, ((0, 0), (0, height - pixels.shape[1]), (0, width - pixels.shape[2])))
        return pixels, image.size

    def run(self, backend: Callable, inputs: list[np.ndarray]) -> list:
        return backend(inputs)

    def answer(self, output: tuple[np.ndarray, np.ndarray, np.ndarray], size: tuple[int, int]) -> dict:
        boxes, labels, scores = output
        keep = scores >= self.score_threshold
        boxes = np.clip(boxes, 0, [size[0], size[1], size[0], size[1]])  # padding is not the image
        detections = [
            {
                "label": self.classes[int(k) - 1],
                "index": int(k) - 1,
                "score": float(s),
                "box": [float(v) for v in b],
            }
            for b, k, s in zip(boxes[keep], labels[keep], scores[keep], strict=True)
        ]
        return {"detections": detections, "width": size[0], "height": size[1]}

    def health_input(self) -> list[np.ndarray]:
        return [np.zeros((3, 64, 64), np.float32)]
