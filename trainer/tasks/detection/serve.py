"""Serving a detector: the decoded image as float [0, 1] at its own size (the detector resizes and
normalises inside), the backend called on the list of a batch's images; boxes in the image's
pixels, those under the score threshold left out."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image


class DetectionHandler:
    def __init__(self, meta: dict, score_threshold: float, transform: Callable):
        self.classes, self.score_threshold, self.transform = meta["classes"], score_threshold, transform

    def prepare(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        return self.transform(image).numpy(), image.size

    def run(self, backend: Callable, inputs: list[np.ndarray]) -> list:
        return backend(inputs)

    def answer(self, output: tuple[np.ndarray, np.ndarray, np.ndarray], size: tuple[int, int]) -> dict:
        boxes, labels, scores = output
        keep = scores >= self.score_threshold
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
