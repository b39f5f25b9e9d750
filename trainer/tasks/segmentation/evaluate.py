"""`vft eval` of a segmenter: mask-folder domains (the run's ignore index, class indices checked
against its classes) through the checkpoint's eval preprocessing; per domain the task's metrics
(mIoU, Dice, pixel accuracy, per-class IoU and Dice, confusion), ranked by the run's monitored
metric; corruptions in [0, 1] pixel space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainer.components import robustness as R
from trainer.components.deploy import Batches, OutputMetrics, TaskEval, loader_batches
from trainer.components.preprocess import eval_transform
from trainer.tasks.base import Task
from trainer.tasks.segmentation.data import (
    MaskCollate,
    MaskDataset,
    MaskSamples,
    check_class_indices,
    read_maskfolder,
)


class SegmentationEval(TaskEval):
    columns = [(k, k) for k in ("miou", "dice", "pixel_acc")]

    def __init__(self, task: Task, meta: dict):
        self.task, self.meta = task, meta
        self.metric = meta["monitor"]["metric"].removeprefix("val/")
        prep = task.preprocessing_from_meta(meta)
        self.transform = eval_transform(prep)
        self.norm = R.Normalizer(prep.mean, prep.std)

    def read_samples(self, path: Path) -> MaskSamples:
        samples = read_maskfolder(path, self.meta["segmentation"]["ignore_index"])
        check_class_indices(samples, self.meta["classes"])
        return samples

    def batches(self, samples: MaskSamples, batch_size: int) -> Batches:
        return loader_batches(MaskDataset(samples, self.transform), MaskCollate(), batch_size)

    def metrics(self) -> OutputMetrics:
        return OutputMetrics(self.task.create_metrics(self.meta), self.task.metric_inputs)

    def corrupt(self, inputs: np.ndarray, name: str, severity: int, seed: int, index: int) -> np.ndarray:
        return self.norm.corrupt(torch.from_numpy(inputs), name, severity, seed + index).numpy()
