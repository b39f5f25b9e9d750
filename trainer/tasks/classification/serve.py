"""Serving a classifier: the checkpoint's eval preprocessing (resize, centre crop, normalise)
from meta.json, batched through the backend; the top-k labels with softmax scores (sigmoid for
multilabel)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from trainer.components.preprocess import Preprocessing, eval_transform


def top_k_answer(scores: np.ndarray, meta: dict, top_k: int) -> dict:
    """Softmax (sigmoid for multilabel) over one image's logits, top k: label, index, score."""
    if meta["multilabel"]:
        probs = 1.0 / (1.0 + np.exp(-scores))
    else:
        shifted = np.exp(scores - scores.max())
        probs = shifted / shifted.sum()
    order = np.argsort(-probs)[: min(top_k, len(probs))]
    classes = meta["classes"]
    return {"predictions": [{"label": classes[i], "index": int(i), "score": float(probs[i])} for i in order]}


class ClassificationHandler:
    """Eval preprocessing of one image; one batch per backend call; top-k labels."""

    def __init__(self, meta: dict, top_k: int):
        self.meta, self.top_k = meta, top_k
        self.transform = eval_transform(Preprocessing.from_meta(meta["preprocessing"]))
        self.size = int(meta["preprocessing"]["input_size"])

    def prepare(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        return self.transform(image).numpy(), image.size

    def run(self, backend: Callable, inputs: list[np.ndarray]) -> list:
        return list(backend(np.stack(inputs)))

    def answer(self, output: np.ndarray, size: tuple[int, int]) -> dict:
        return top_k_answer(output, self.meta, self.top_k)

    def health_input(self) -> list[np.ndarray]:
        return [np.zeros((3, self.size, self.size), np.float32)]
