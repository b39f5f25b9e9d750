"""`vft eval` of an instance segmentation run: COCO or YOLO domains (with the run's classes) as
[0, 1] images of their own sizes; per domain mask and box mAP, ranked by the run's monitored
metric; corruptions image by image."""

from __future__ import annotations

from collections.abc import Callable

from trainer.components.deploy import ImageListEval
from trainer.tasks.base import Task
from trainer.tasks.instance_segmentation.data import InstanceDataset, read_instances


class InstanceEval(ImageListEval):
    columns = [(k, k) for k in ("mask_map", "mask_map50", "box_map")]

    def __init__(self, task: Task, meta: dict, transform: Callable):
        super().__init__(task, meta, transform, read_instances, InstanceDataset)
