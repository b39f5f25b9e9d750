"""Serving a classifier: the checkpoint's eval preprocessing (resize, centre crop, normalise)
from meta.json, batched through the backend; the top-k labels with softmax scores (sigmoid for
multilabel). With a model on a GPU, a batch of request JPEGs can be decoded and preprocessed
there at once (`run_encoded`), as `data.decode: gpu` does in training."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from trainer.components.device_decode import BatchTransform, Encoded, decode_batch
from trainer.components.images import BadImageError
from trainer.components.preprocess import Preprocessing, eval_ops, eval_transform, normalize_ops


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
        prep = Preprocessing.from_meta(meta["preprocessing"])
        self.transform = eval_transform(prep)
        self.device_transform = BatchTransform(eval_ops(prep), normalize_ops(prep))
        self.size = int(meta["preprocessing"]["input_size"])

    def prepare(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        return self.transform(image).numpy(), image.size

    def run(self, backend: Callable, inputs: list[np.ndarray]) -> list:
        return list(backend(np.stack(inputs)))

    def run_encoded(self, backend: Callable, items: list[Encoded], device: torch.device) -> list:
        """Requests read but not decoded: their JPEGs decoded together on `device` (nvJPEG on a
        GPU; other formats arrive decoded), the eval preprocessing there, one backend call. An
        image no decoder reads is its own BadImageError in the answers, not the batch's."""
        images, kept = decode_batch(items, device, skip_bad=True)
        answers: list = [BadImageError(f"{item.path}: cannot decode the image") for item in items]
        if images:
            batch, _ = self.device_transform(images, None)
            for i, output in zip(kept, backend(batch.cpu().numpy()), strict=True):
                answers[i] = output
        return answers

    def answer(self, output: np.ndarray, size: tuple[int, int]) -> dict:
        return top_k_answer(output, self.meta, self.top_k)

    def health_input(self) -> list[np.ndarray]:
        return [np.zeros((3, self.size, self.size), np.float32)]
