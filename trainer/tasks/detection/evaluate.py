"""`vft eval` of a detector: COCO or YOLO domains (with the run's classes) as [0, 1] images of
their own sizes; per domain the task's metrics (mAP, mAP50, mAP75, mAR@100, matched-box IoU,
per-class AP), ranked by the run's monitored metric; corruptions image by image."""

from __future__ import annotations

from collections.abc import Callable

from trainer.components.deploy import ImageListEval
from trainer.tasks.base import Task
from trainer.tasks.detection.data import BoxDataset, read_detection


class DetectionEval(ImageListEval):
    columns = [(k, k) for k in ("map", "map50", "map75", "box_iou")]

    def __init__(self, task: Task, meta: dict, transform: Callable):
        super().__init__(task, meta, transform, read_detection, BoxDataset)
