"""Serving a segmenter: the whole image resized to the model's input size and normalised, batched
through the backend; the logits resized back to the image's size (bilinear), their argmax as a
PNG of class indices (base64) with each class's share of the pixels."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2 as T

MAX_LOGIT_VALUES = 64_000_000  # past this many (classes x pixels), upsample the labels, not the logits


class SegmentationHandler:
    def __init__(self, meta: dict):
        p = meta["preprocessing"]
        self.classes = meta["classes"]
        self.size = int(p["input_size"])
        self.transform = T.Compose([
            T.ToImage(), T.Resize((self.size, self.size), antialias=True),
            T.ToDtype(torch.float32, scale=True), T.Normalize(p["mean"], p["std"]),
        ])  # fmt: skip

    def prepare(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        return self.transform(image).numpy(), image.size

    def run(self, backend: Callable, inputs: list[np.ndarray]) -> list:
        return list(backend(np.stack(inputs)))

    def answer(self, output: np.ndarray, size: tuple[int, int]) -> dict:
        width, height = size
        logits = torch.from_numpy(output)[None]
        if logits.shape[1] * width * height <= MAX_LOGIT_VALUES:
            mask = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            mask = mask.argmax(1)[0]
        else:
            small = logits.argmax(1, keepdim=True).float()
            mask = F.interpolate(small, size=(height, width), mode="nearest")[0, 0].long()
        counts = torch.bincount(mask.flatten(), minlength=len(self.classes)).tolist()
        png = io.BytesIO()
        Image.fromarray(mask.to(torch.uint8).numpy(), mode="L").save(png, format="PNG")
        return {
            "mask_png": base64.b64encode(png.getvalue()).decode(),
            "width": width,
            "height": height,
            "classes": self.classes,
            "fractions": {c: n / (width * height) for c, n in zip(self.classes, counts, strict=True)},
        }

    def health_input(self) -> list[np.ndarray]:
        return [np.zeros((3, self.size, self.size), np.float32)]
