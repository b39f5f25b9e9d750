"""Throughput of a backend: images per second at batch 1 and at the export batch size."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from trainer.components.deploy import IMAGES, Batches


def images_per_second(predict: Callable, inputs: np.ndarray | list, seconds: float = 1.0) -> float:
    """Median throughput over repeated calls after a warm-up (at least 3 timed calls); `inputs`
    is an NCHW array or a list of images."""
    predict(inputs)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        predict(inputs)
        times.append(time.perf_counter() - start)
    return len(inputs) / statistics.median(times)


def timing_inputs(kind: str, batches: Batches, size: int) -> dict[int, Any]:
    """Inputs to time, by batch size: the first image, and a batch of `size` (images repeated).
    Images of their own sizes run one per call, so they are timed at batch 1 only."""
    if kind == IMAGES:
        return {1: batches[0][0][:1]}
    pool = np.concatenate([inputs for inputs, _ in batches])
    batch = np.ascontiguousarray(np.resize(pool, (size, *pool.shape[1:])))
    return {1: batch[:1], size: batch}


def speeds(predict: Callable, inputs: dict[int, Any]) -> dict[str, float]:
    return {f"img_s_batch{n}": images_per_second(predict, x) for n, x in inputs.items()}
