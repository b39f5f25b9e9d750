"""`vft eval` of a detector: COCO or YOLO domains (with the run's classes) as [0, 1] images of
their own sizes; per domain the task's metrics (mAP, mAP50, mAP75, mAR@100, matched-box IoU,
per-class AP), ranked by the run's monitored metric; corruptions image by image."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from trainer.components import robustness as R
from trainer.components.deploy import Batches, OutputMetrics, TaskEval, loader_batches
from trainer.errors import DataError
from trainer.tasks.base import Task
from trainer.tasks.detection.data import BoxCollate, BoxDataset, BoxSamples, read_detection

IMAGE_SEEDS = 1000  # image j of batch i is corrupted with seed + 1000 * i + j


class DetectionEval(TaskEval):
    columns = [(k, k) for k in ("map", "map50", "map75", "box_iou")]

    def __init__(self, task: Task, meta: dict, transform: Callable):
        self.task, self.meta, self.transform = task, meta, transform
        self.metric = meta["monitor"]["metric"].removeprefix("val/")

    def read_samples(self, path: Path) -> BoxSamples:
        samples = read_detection(path)
        if samples.classes != self.meta["classes"]:
            raise DataError(f"{path}: classes {samples.classes} differ from the run's {self.meta['classes']}")
        return samples

    def batches(self, samples: BoxSamples, batch_size: int) -> Batches:
        return loader_batches(BoxDataset(samples, self.transform), BoxCollate(), batch_size)

    def metrics(self) -> OutputMetrics:
        return OutputMetrics(self.task.create_metrics(self.meta), self.task.metric_inputs)

    def corrupt(self, inputs: list[np.ndarray], name: str, severity: int, seed: int, index: int) -> list:
        return [
            R.corrupt(torch.from_numpy(x)[None], name, severity, seed + IMAGE_SEEDS * index + j)[0].numpy()
            for j, x in enumerate(inputs)
        ]
